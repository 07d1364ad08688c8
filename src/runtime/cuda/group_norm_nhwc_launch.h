// The launcher of the hand-written CUDA GroupNorm kernel (group_norm_nhwc.cu), in plain C++ so
// that the LibTorch side includes neither CUDA's headers nor nvcc's: runtime/group_norm_cuda.cpp
// calls it. Only built where LibTorch has CUDA and nvcc is there (DIFFUSE_HAVE_CUDA_KERNELS).
#pragma once

namespace diffuse::cuda_kernels {

// y = silu?((x + shift − μ_g) / √(σ²_g + ε) · γ + β) for channels-last (NHWC) activations, one
// thread block per image. x and y: N × HW × C in memory, bf16 (`bf16`) or float32, 16-byte
// aligned; shift: N × C float32 or null; gamma, beta: C float32. C must be a multiple of 8 and of
// `groups`, at most 1024. `stream` is a cudaStream_t. Returns a cudaError_t as int (0: launched).
int group_norm_nhwc(const void* x, void* y, bool bf16, const float* shift, const float* gamma, const float* beta,
                    int n, int hw, int c, int groups, float eps, bool silu, void* stream);

}  // namespace diffuse::cuda_kernels
