#include "diffuse/io/image.h"

#include <stb/stb_image.h>
#include <stb/stb_image_resize.h>
#include <stb/stb_image_write.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string_view>

#include "diffuse/io/atomic_file.h"

namespace diffuse {

torch::Tensor to_uint8(const torch::Tensor& x) {
  return ((x.detach().to(torch::kCPU, torch::kFloat32) + 1.0) * 127.5).round().clamp(0, 255).to(torch::kUInt8);
}

torch::Tensor from_uint8(const torch::Tensor& x) { return x.to(torch::kFloat32) / 127.5 - 1.0; }

torch::Tensor make_grid(const torch::Tensor& images, int64_t nrow, int64_t padding) {
  TORCH_CHECK(images.dim() == 4, "make_grid: expected [N, C, H, W], got ", images.sizes());
  const int64_t N = images.size(0), C = images.size(1), H = images.size(2), W = images.size(3);
  if (nrow <= 0) nrow = static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(N))));
  const int64_t cols = std::min(nrow, std::max<int64_t>(N, 1));
  const int64_t rows = (N + cols - 1) / cols;
  auto grid = torch::zeros({C, rows * (H + padding) + padding, cols * (W + padding) + padding},
                           images.options().device(torch::kCPU).dtype(torch::kFloat32));
  auto src = images.detach().to(torch::kCPU, torch::kFloat32);
  for (int64_t i = 0; i < N; ++i) {
    const int64_t r = i / cols, c = i % cols;
    grid.narrow(1, padding + r * (H + padding), H).narrow(2, padding + c * (W + padding), W).copy_(src[i]);
  }
  return grid;
}

std::string encode_png(const torch::Tensor& image_u8) {
  TORCH_CHECK(image_u8.dim() == 3 && image_u8.size(0) >= 1 && image_u8.size(0) <= 4,
              "encode_png: expected [1 to 4, H, W], got ", image_u8.sizes());
  auto hwc = image_u8.to(torch::kCPU, torch::kUInt8).permute({1, 2, 0}).contiguous();
  const int h = static_cast<int>(hwc.size(0)), w = static_cast<int>(hwc.size(1)), c = static_cast<int>(hwc.size(2));
  std::string out;
  auto sink = [](void* ctx, void* data, int size) { static_cast<std::string*>(ctx)->append(static_cast<char*>(data), size); };
  if (!stbi_write_png_to_func(sink, &out, w, h, c, hwc.data_ptr<uint8_t>(), w * c)) {
    throw std::runtime_error("PNG encoding failed");
  }
  return out;
}

void save_image_png(const std::string& path, const torch::Tensor& image) {
  // NaN would become black pixels and Inf white ones: a broken result must not pass for an image.
  if (!torch::isfinite(image).all().item<bool>()) {
    throw std::runtime_error("'" + path +
                             "' not written: the image holds NaN or Inf (a diverged network, or "
                             "flags such as --eta or --guidance far outside their range)");
  }
  write_file_atomic(path, encode_png(to_uint8(image)));
}

void save_grid_png(const std::string& path, const torch::Tensor& images, int64_t nrow) {
  save_image_png(path, make_grid(images, nrow));
}

namespace {

const char* stb_reason(const char* otherwise) { return stbi_failure_reason() ? stbi_failure_reason() : otherwise; }

const unsigned char* bytes_of(const std::string& s) { return reinterpret_cast<const unsigned char*>(s.data()); }

constexpr std::string_view kPngSignature("\x89PNG\r\n\x1a\n", 8);

bool is_png(const std::string& bytes) { return bytes.compare(0, kPngSignature.size(), kPngSignature) == 0; }

// Where a JPEG's segments start: after its SOI marker (FF D8), fill bytes FF before it taken as stb
// takes them; 0 where the bytes do not start as a JPEG.
size_t jpeg_segments_start(const std::string& bytes) {
  const size_t fill = std::min(bytes.find_first_not_of('\xff'), bytes.size());
  return fill > 0 && fill < bytes.size() && bytes[fill] == '\xd8' ? fill + 1 : 0;
}

// A PNG's chunks must each fit in the file: stb sizes its buffer from a chunk's declared length
// before reading it, so a file of a few hundred bytes could make it allocate gigabytes.
void check_png_chunks(const std::string& bytes, const std::string& what) {
  if (!is_png(bytes)) return;
  size_t at = kPngSignature.size();
  while (true) {
    if (bytes.size() - at < 12) throw std::runtime_error("image '" + what + "': truncated PNG (no IEND chunk)");
    const auto u8 = [&](size_t i) { return static_cast<uint32_t>(static_cast<unsigned char>(bytes[at + i])); };
    const uint32_t length = (u8(0) << 24) | (u8(1) << 16) | (u8(2) << 8) | u8(3);
    const std::string type = bytes.substr(at + 4, 4);
    if (length > bytes.size() - at - 12) {
      throw std::runtime_error("image '" + what + "': PNG chunk '" + type + "' claims " + std::to_string(length) +
                               " bytes, past the end of the file");
    }
    at += 12 + length;
    if (type == "IEND") return;
  }
}

// A JPEG's Huffman tables (DHT segments) may hold at most 256 codes each: stb 2.27 writes a table's
// code lengths and symbols into arrays of 256 before it checks the counts, so a 35-byte file with
// counts summing past 256 writes past them. The walk follows the markers the way stb reads them
// (bytes between segments skipped, the entropy-coded data of each scan skipped to its next marker),
// so every DHT segment stb would read is looked at, before and between scans.
void check_jpeg_huffman_tables(const std::string& bytes, const std::string& what) {
  const size_t n = bytes.size();
  // stb reads 0 past the end
  const auto u8 = [&](size_t i) { return i < n ? static_cast<unsigned char>(bytes[i]) : 0u; };
  const auto is_restart = [](unsigned marker) { return marker >= 0xD0 && marker <= 0xD7; };  // RST0–RST7
  // in a scan's entropy-coded data, FF 00 is a stuffed FF and a restart marker does not end it
  const auto scan_ends_at = [&](size_t i) { return u8(i) == 0xFF && u8(i + 1) != 0x00 && !is_restart(u8(i + 1)); };
  size_t at = jpeg_segments_start(bytes);
  if (at == 0) return;  // not a JPEG
  while (at < n) {
    if (u8(at) != 0xFF) {  // not a marker: stb skips to the next one
      ++at;
      continue;
    }
    while (at < n && u8(at) == 0xFF) ++at;  // fill bytes
    const unsigned marker = u8(at++);
    if (marker == 0xD9) return;                                                            // EOI
    if (marker == 0x00 || marker == 0x01 || is_restart(marker)) continue;                  // no length
    const size_t length = (u8(at) << 8) | u8(at + 1);                                      // counts its own two bytes
    if (length < 2) return;                                                                // stb refuses the segment
    if (marker == 0xC4) {  // DHT: tables of [class|id] [16 counts] [symbols]
      size_t table = at + 2;
      while (table < at + length) {
        size_t codes = 0;
        for (size_t i = 1; i <= 16; ++i) codes += u8(table + i);
        if (codes > 256) {
          throw std::runtime_error("image '" + what + "': JPEG Huffman table with " + std::to_string(codes) +
                                   " codes, more than 256");
        }
        table += 17 + codes;
      }
    }
    at += length;
    if (marker == 0xDA) {  // SOS: skip the scan's entropy-coded data to the next marker
      while (at + 1 < n && !scan_ends_at(at)) ++at;
    }
  }
}

// stb picks its decoder by a file's first bytes, whatever its name, and has a dozen (TGA, PSD, HDR,
// PIC, PNM, GIF besides these): only PNG, JPEG and BMP get through, so that no other decoder ever
// reads outside bytes.
void check_format(const std::string& bytes, const std::string& what) {
  const bool bmp = bytes.compare(0, 2, "BM") == 0;
  if (!is_png(bytes) && jpeg_segments_start(bytes) == 0 && !bmp) {
    throw std::runtime_error("image '" + what + "' is not a PNG, JPEG or BMP file");
  }
}

// The checks of outside bytes that stb's own parsing lacks, before stb reads any of them.
void check_before_stb(const std::string& bytes, const std::string& what) {
  if (bytes.size() > static_cast<size_t>(std::numeric_limits<int>::max())) {
    throw std::runtime_error("image '" + what + "' is larger than 2 GiB");
  }
  check_format(bytes, what);
  check_png_chunks(bytes, what);
  check_jpeg_huffman_tables(bytes, what);
}

}  // namespace

int image_file_channels(const std::string& path) {
  return image_bytes_channels(read_file(path, kMaxImageFileBytes), path);
}

int image_bytes_channels(const std::string& bytes, const std::string& what) {
  return image_bytes_header(bytes, what).channels;
}

ImageHeader image_bytes_header(const std::string& bytes, const std::string& what) {
  int w = 0, h = 0, c = 0;
  check_before_stb(bytes, what);
  if (!stbi_info_from_memory(bytes_of(bytes), static_cast<int>(bytes.size()), &w, &h, &c)) {
    throw std::runtime_error("cannot read image '" + what + "': " + stb_reason("unknown format"));
  }
  return {w, h, c};
}

torch::Tensor decode_image_u8(const std::string& bytes, const std::string& what, int channels, int64_t size) {
  TORCH_CHECK(channels >= 1 && channels <= 4, "decode_image_u8: channels must be 1 to 4");
  int w = 0, h = 0, c = 0;
  check_before_stb(bytes, what);
  // width × height from the header, before a pixel is decoded (a 1 MB PNG can claim 30000×30000)
  if (stbi_info_from_memory(bytes_of(bytes), static_cast<int>(bytes.size()), &w, &h, &c)) {
    const int64_t pixels = static_cast<int64_t>(w) * h;
    const auto size_text = std::to_string(w) + "×" + std::to_string(h);
    if (pixels > kMaxImagePixels) {
      throw std::runtime_error("image '" + what + "' is " + size_text + ", more than the " +
                               std::to_string(kMaxImagePixels) + " pixels an input may have");
    }
    const int64_t describable = kImagePixelsAlwaysAllowed + kMaxImagePixelsPerByte * static_cast<int64_t>(bytes.size());
    if (pixels > describable) {
      throw std::runtime_error("image '" + what + "' claims " + size_text + " pixels in " +
                               std::to_string(bytes.size()) + " bytes, more than a file of that size can hold (" +
                               std::to_string(kMaxImagePixelsPerByte) + " pixels a byte): truncated or forged");
    }
  }
  std::unique_ptr<unsigned char, void (*)(void*)> pixels(
      stbi_load_from_memory(bytes_of(bytes), static_cast<int>(bytes.size()), &w, &h, &c, channels), stbi_image_free);
  if (!pixels) throw std::runtime_error("cannot decode image '" + what + "': " + stb_reason("unknown error"));
  auto hwc = torch::from_blob(pixels.get(), {h, w, channels}, torch::kUInt8).clone();
  if (size > 0 && (h != size || w != size)) {  // resized with a box/triangle filter
    auto resized = torch::empty({size, size, channels}, torch::kUInt8);
    if (!stbir_resize_uint8(hwc.data_ptr<uint8_t>(), w, h, 0, resized.data_ptr<uint8_t>(), static_cast<int>(size),
                            static_cast<int>(size), 0, channels)) {
      throw std::runtime_error("cannot resize image '" + what + "'");
    }
    hwc = resized;
  }
  return hwc.permute({2, 0, 1}).contiguous();
}

torch::Tensor load_image_u8(const std::string& path, int channels, int64_t size) {
  return decode_image_u8(read_file(path, kMaxImageFileBytes), path, channels, size);
}

}  // namespace diffuse
