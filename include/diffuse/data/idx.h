// The IDX format of MNIST and Fashion-MNIST (http://yann.lecun.com/exdb/mnist/), plain or gzip:
//   magic = 0x00 0x00 type ndim, then ndim big-endian u32 sizes, then the data (type 0x08: u8).
#pragma once

#include <torch/torch.h>

#include <string>

namespace diffuse {

// Reads an unsigned-byte IDX file (gzip or not) into a uint8 tensor of its dimensions.
// Validates the magic number, the number of dimensions (`expected_ndim`), the sizes and the
// length: a truncated, padded or corrupt file throws an error naming the file and the problem.
torch::Tensor read_idx_u8(const std::string& path, int expected_ndim);

}  // namespace diffuse
