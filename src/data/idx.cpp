#include "diffuse/data/idx.h"

#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <stdexcept>

namespace diffuse {

namespace {

struct GzCloser {
  void operator()(gzFile_s* f) const { gzclose(f); }
};

// Reads exactly n bytes or reports how many were there.
size_t read_bytes(gzFile f, void* dst, size_t n) {
  size_t done = 0;
  auto* out = static_cast<unsigned char*>(dst);
  while (done < n) {
    const unsigned chunk = static_cast<unsigned>(std::min<size_t>(n - done, 1u << 30));
    const int got = gzread(f, out + done, chunk);
    if (got <= 0) break;
    done += static_cast<size_t>(got);
  }
  return done;
}

}  // namespace

torch::Tensor read_idx_u8(const std::string& path, int expected_ndim, uint64_t max_bytes) {
  auto fail = [&](const std::string& what) { return std::runtime_error("IDX file '" + path + "': " + what); };
  std::unique_ptr<gzFile_s, GzCloser> f(gzopen(path.c_str(), "rb"));  // also reads uncompressed files
  if (!f) throw fail("cannot open");

  unsigned char magic[4];
  if (read_bytes(f.get(), magic, 4) != 4) throw fail("truncated: shorter than the 4-byte magic number");
  if (magic[0] != 0 || magic[1] != 0) throw fail("bad magic number (not an IDX file, or corrupt gzip)");
  if (magic[2] != 0x08) throw fail("data type 0x" + std::to_string(magic[2]) + " is not unsigned byte (0x08)");
  const int ndim = magic[3];
  if (ndim != expected_ndim) {
    throw fail("has " + std::to_string(ndim) + " dimensions, expected " + std::to_string(expected_ndim));
  }
  std::vector<int64_t> dims(ndim);
  int64_t total = 1;
  for (int d = 0; d < ndim; ++d) {
    unsigned char b[4];
    if (read_bytes(f.get(), b, 4) != 4) throw fail("truncated inside the header");
    dims[d] = (int64_t{b[0]} << 24) | (int64_t{b[1]} << 16) | (int64_t{b[2]} << 8) | int64_t{b[3]};
    if (dims[d] <= 0 || dims[d] > (1 << 28)) {
      throw fail("implausible size " + std::to_string(dims[d]) + " in dimension " + std::to_string(d));
    }
    total *= dims[d];
    if (static_cast<uint64_t>(total) > max_bytes) {
      throw fail("the header promises " + std::to_string(total) + " bytes of data, more than the limit of " +
                 std::to_string(max_bytes) + " (kMaxIdxBytes)");
    }
  }
  if (ndim == 3 && dims[1] != dims[2]) {
    throw fail("images are " + std::to_string(dims[1]) + "×" + std::to_string(dims[2]) + "; only square ones are read");
  }
  // Read in chunks, so that memory follows the bytes actually there and not the header's promise
  // (a 16-byte file may claim gigabytes).
  constexpr size_t kChunk = size_t{64} << 20;
  std::string data;
  while (data.size() < static_cast<size_t>(total)) {
    const size_t want = std::min(kChunk, static_cast<size_t>(total) - data.size());
    const size_t before = data.size();
    data.resize(before + want);
    const size_t got = read_bytes(f.get(), data.data() + before, want);
    data.resize(before + got);
    if (got < want) break;
  }
  if (data.size() != static_cast<size_t>(total)) {
    throw fail("truncated: header promises " + std::to_string(total) + " data bytes, found " +
               std::to_string(data.size()));
  }
  auto out = torch::empty(dims, torch::kUInt8);
  std::memcpy(out.data_ptr<uint8_t>(), data.data(), data.size());
  unsigned char extra;
  if (read_bytes(f.get(), &extra, 1) != 0) throw fail("has trailing bytes after the " + std::to_string(total) + " promised");
  int errnum = Z_OK;
  gzerror(f.get(), &errnum);
  if (errnum != Z_OK && errnum != Z_STREAM_END) throw fail("corrupt gzip stream");
  return out;
}

}  // namespace diffuse
