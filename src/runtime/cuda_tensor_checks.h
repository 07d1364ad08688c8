// What the own CUDA kernels (src/runtime/cuda/*.cu) read and write: channels-last activations whose
// pixels they load 16 bytes at a time, 8 channels of bf16 or float32 (cuda/lanes8.cuh). Shared by
// their launchers' checks (group_norm_cuda.cpp, conv_epilogue_cuda.cpp, upsample_cuda.cpp).
// Private to src/runtime.
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace diffuse {

// Whether t's data starts on a 16-byte boundary (the kernels' vector loads and stores).
inline bool aligned_16_bytes(const torch::Tensor& t) {
  return reinterpret_cast<std::uintptr_t>(t.data_ptr()) % 16 == 0;
}

// A float32 or bf16 channels-last tensor, 16-byte aligned: what the 8-channel kernels take.
inline bool nhwc_lanes8_tensor(const torch::Tensor& t) {
  const auto dtype = t.scalar_type();
  return (dtype == torch::kFloat32 || dtype == torch::kBFloat16) && t.is_contiguous(c10::MemoryFormat::ChannelsLast) &&
         aligned_16_bytes(t);
}

}  // namespace diffuse
