// The launcher of the hand-written CUDA bias epilogue (channel_bias_nhwc.cu), in plain C++ so that
// the LibTorch side includes neither CUDA's headers nor nvcc's: runtime/conv_epilogue_cuda.cpp
// calls it. Only built where LibTorch has CUDA and nvcc is there (DIFFUSE_HAVE_CUDA_KERNELS).
#pragma once

namespace diffuse::cuda_kernels {

// y[p, c] ← y[p, c] + bias[c] (+ residual[p, c]) in place, for channels-last (NHWC) activations of
// `pixels` pixels (N·H·W) and c channels. y and residual: bf16 (`bf16`) or float32, 16-byte
// aligned, the same dtype; residual may be null; bias: c float32 (any alignment). c must be a
// multiple of 8.
// `stream` is a cudaStream_t. Returns a cudaError_t as int (0: launched).
int add_channel_bias_nhwc(void* y, const void* residual, bool bf16, const float* bias, long long pixels, int c,
                          void* stream);

}  // namespace diffuse::cuda_kernels
