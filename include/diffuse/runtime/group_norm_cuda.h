// GroupNorm on channels-last CUDA activations, with the ResBlock's time shift before it and SiLU
// after it, in one hand-written kernel (src/runtime/cuda/group_norm_nhwc.cu): for inference, where
// nothing needs a gradient. LibTorch's GroupNorm copies channels-last tensors to NCHW and back,
// and the shift and the SiLU are passes of their own; on an H200 those passes and copies took
// longer than the convolutions of a ddpm-cifar10 forward pass (docs/PERFORMANCE.md).
//   y = silu?((x + shift[n, c] − μ_ng) / √(σ²_ng + ε) · γ_c + β_c)
#pragma once

#include <torch/torch.h>

namespace diffuse {

// Whether this build has the kernel (a CUDA LibTorch and nvcc at build time).
bool cuda_group_norm_built();

// Whether group_norm_cuda takes this call: the kernel is built, not switched off
// (DIFFUSE_CUDA_GROUP_NORM=0), x is a 4-D channels-last float32 or bf16 CUDA tensor whose
// channels (a multiple of 8, at most 1024) split into `groups`, γ and β are given (an affine
// norm), and no gradient is wanted.
bool cuda_group_norm_applies(const torch::Tensor& x, const torch::Tensor& gamma, const torch::Tensor& beta,
                             const torch::Tensor& shift, int64_t groups);

// x: [N, C, H, W] channels-last; shift: [N, C] or undefined; gamma, beta: [C]. Returns y in x's
// dtype and memory format. Throws where cuda_group_norm_applies is false.
torch::Tensor group_norm_cuda(const torch::Tensor& x, const torch::Tensor& shift, const torch::Tensor& gamma,
                              const torch::Tensor& beta, int64_t groups, double eps, bool silu);

}  // namespace diffuse
