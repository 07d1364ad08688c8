// Images at the edge of the library: the only place that converts between 8-bit pixels and
// the [−1, 1] floats used inside. PNG/JPEG decoding and PNG encoding through stb.
#pragma once

#include <torch/torch.h>

#include <string>

namespace diffuse {

// [−1, 1] floats → uint8: round((x + 1) · 127.5), clamped to [0, 255].
torch::Tensor to_uint8(const torch::Tensor& x);
// uint8 → [−1, 1] floats: x / 127.5 − 1.
torch::Tensor from_uint8(const torch::Tensor& x);

// Tiles [N, C, H, W] images (values in [−1, 1]) into one [C, H', W'] image with `nrow` images
// per row (0: ⌈√N⌉) and `padding` pixels between them.
torch::Tensor make_grid(const torch::Tensor& images, int64_t nrow = 0, int64_t padding = 2);

// PNG of a [C, H, W] uint8 image, C = 1 or 3 (2 and 4: with an alpha channel last).
std::string encode_png(const torch::Tensor& image_u8);
// Writes images ([N, C, H, W] in [−1, 1]) as a grid PNG, atomically.
void save_grid_png(const std::string& path, const torch::Tensor& images, int64_t nrow = 0);
// Writes one [C, H, W] image in [−1, 1] as PNG, atomically.
// Refuses (throws, writes nothing) an image holding NaN or Inf.
void save_image_png(const std::string& path, const torch::Tensor& image);

// Inputs larger than these are refused before they are decoded: 2^26 pixels (8192×8192) and
// 256 MiB of file, far above any data set's images.
constexpr int64_t kMaxImagePixels = int64_t{1} << 26;
constexpr uint64_t kMaxImageFileBytes = uint64_t{256} << 20;
// A file cannot describe more pixels than its bytes allow: DEFLATE inflates at most 1032:1 and a
// 1-bit PNG packs 8 pixels a byte (~8,300 pixels a byte at best), GIF's LZW ~1,500, the RLE
// formats fewer; so an image may claim 2^15 pixels a byte of file, and any image 2^20 pixels.
// A 102-byte TGA that claims 6168×6168 (RLE stb fills past the data's end) is refused before
// its 114 MB are decoded.
constexpr int64_t kMaxImagePixelsPerByte = int64_t{1} << 15;
constexpr int64_t kImagePixelsAlwaysAllowed = int64_t{1} << 20;

// Number of channels stored in an image file (1 grey, 2 grey+alpha, 3 RGB, 4 RGBA); throws
// naming the file if it is not a readable PNG/JPEG/BMP/...
int image_file_channels(const std::string& path);
// Decodes an image file to [channels, size, size] uint8 (channels 1 or 3), resizing with a
// box/triangle filter when the file is not size×size. size ≤ 0 keeps the file's size.
torch::Tensor load_image_u8(const std::string& path, int channels, int64_t size);

// The same two for an image file's bytes held in memory (an archive's member); `what` names it in
// the messages. decode_image_u8 also takes channels 2 and 4 (grey or RGB with the alpha last).
int image_bytes_channels(const std::string& bytes, const std::string& what);
torch::Tensor decode_image_u8(const std::string& bytes, const std::string& what, int channels, int64_t size);
// Width, height and channels from an image's header, nothing decoded; throws naming `what`.
struct ImageHeader {
  int64_t width = 0, height = 0;
  int channels = 0;
};
ImageHeader image_bytes_header(const std::string& bytes, const std::string& what);

}  // namespace diffuse
