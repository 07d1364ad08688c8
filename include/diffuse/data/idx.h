// The IDX format of MNIST and Fashion-MNIST (http://yann.lecun.com/exdb/mnist/), plain or gzip:
//   magic = 0x00 0x00 type ndim, then ndim big-endian u32 sizes, then the data (type 0x08: u8).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>

namespace diffuse {

// Reads an unsigned-byte IDX file (gzip or not) into a uint8 tensor of its dimensions.
// Validates the magic number, the number of dimensions (`expected_ndim`), the sizes and the
// length: a truncated, padded or corrupt file throws an error naming the file and the problem.
// Data beyond `max_bytes` is refused before it is read, and memory grows only with the bytes
// actually in the file; 3-dimensional files must hold square images.
constexpr uint64_t kMaxIdxBytes = uint64_t{1} << 30;  // 1 GiB of pixels: 20× MNIST's training set
torch::Tensor read_idx_u8(const std::string& path, int expected_ndim, uint64_t max_bytes = kMaxIdxBytes);

}  // namespace diffuse
