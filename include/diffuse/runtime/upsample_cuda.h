// Nearest-neighbour upsampling to twice the size for channels-last activations on the GPU without
// gradients (sampling, evaluation, editing), in one hand-written kernel
// (src/runtime/cuda/upsample_nhwc.cu) that copies each source pixel's channels to its four output
// pixels, in the input's dtype. LibTorch's autocast lists upsample_nearest2d among its float32
// operators, converting bf16 activations there and back (docs/PERFORMANCE.md); nearest-neighbour values are
// exact in any dtype, so the result is the same.
#pragma once

#include <torch/torch.h>

namespace diffuse {

// Whether upsample_twice_cuda takes x: the kernel is built and not switched off
// (DIFFUSE_CUDA_UPSAMPLE=0), x is a 4-D channels-last CUDA tensor whose pixels are whole
// multiples of 16 bytes (8 bf16 or 4 float32 channels), 16-byte aligned, and no gradient is wanted.
bool cuda_upsample_twice_applies(const torch::Tensor& x);

// x: [N, C, H, W] channels-last → [N, C, 2H, 2W] channels-last, y[n, c, i, j] = x[n, c, ⌊i/2⌋, ⌊j/2⌋].
// Throws where cuda_upsample_twice_applies is false.
torch::Tensor upsample_twice_cuda(const torch::Tensor& x);

}  // namespace diffuse
