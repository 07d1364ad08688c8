// The U-Net's operations on activations in either of two layouts, so that each block is written
// once for both:
//   NCHW             [B, C, H, W]            every device, precision and memory format;
//   channel-blocked  [B, C/16, H, W, 16]     float32 on a CPU with oneDNN (runtime/blocked_layout.h),
// told apart by their rank. H and W are dimensions 2 and 3 in both, and channels concatenate
// along dimension 1 in both (torch::cat({a, b}, 1)), blocks being whole.
#pragma once

#include <torch/torch.h>

#include <utility>

namespace diffuse {

inline bool is_blocked(const torch::Tensor& x) { return x.dim() == 5; }

// SiLU(GroupNorm(x + shift)), shift: [B, C] (a ResBlock's time projection) or undefined.
// Blocked, or bf16 NCHW on the CPU: one fused kernel (runtime/group_norm_silu.h); channels-last on
// CUDA: runtime/group_norm_cuda.h where it applies; otherwise LibTorch's ops, the norm in its
// weights' precision.
torch::Tensor norm_silu(torch::nn::GroupNorm& norm, const torch::Tensor& x, const torch::Tensor& shift = {});

// {SiLU(GroupNorm(x)), x}: a ResBlock's first normalisation and the x its residual connection
// reads. Blocked, the second is x passed through the fused kernel, so that backward adds the
// residual's gradient of x inside that kernel; NCHW: x itself.
std::pair<torch::Tensor, torch::Tensor> norm_silu_and_input(torch::nn::GroupNorm& norm, const torch::Tensor& x);

// The same for x = cat(a, b) along channels (a block of the U-Net's up path: h and its skip
// connection). Blocked: one kernel reads a and b and writes both outputs, and its backward writes
// ∂L/∂a and ∂L/∂b (runtime/group_norm_silu.h); otherwise torch::cat first. DIFFUSE_FUSED_CAT=0
// takes torch::cat in either layout (to measure the kernel).
std::pair<torch::Tensor, torch::Tensor> norm_silu_and_input_of_cat(torch::nn::GroupNorm& norm, const torch::Tensor& a,
                                                                   const torch::Tensor& b);

// dropout(SiLU(GroupNorm(x + shift))), the ResBlock's second normalisation. Blocked: the mask is
// drawn inside the fused kernel (group_norm_silu_blocked) in training mode; NCHW: the module.
torch::Tensor norm_silu_dropout(torch::nn::GroupNorm& norm, const torch::Tensor& x, const torch::Tensor& shift,
                                torch::nn::Dropout& dropout);

// conv(x) (+ residual, where defined) for a k×k convolution module with padding k/2. Blocked:
// oneDNN on the blocked layout, or, where the outputs are not whole blocks of 16 (conv_out),
// runtime/blocked_conv_out.h, which writes NCHW; channels-last on a GPU without gradients: the
// bias and the residual added by one kernel (runtime/conv_epilogue_cuda.h); NCHW: conv3x3
// (runtime/onednn_conv.h) for 3×3 stride 1, else the module's own forward; then y += residual.
torch::Tensor convolve(torch::nn::Conv2d& conv, const torch::Tensor& x, const torch::Tensor& residual = {});

// conv(x) without the module's bias, on the GPU: for a caller that adds a per-channel term of its
// own anyway (a ResBlock's first convolution, whose bias joins the time shift).
torch::Tensor convolve_without_bias(torch::nn::Conv2d& conv, const torch::Tensor& x);

// Nearest-neighbour upsampling to height × width (index ⌊i · in/out⌋ on each axis).
torch::Tensor upsample_nearest(const torch::Tensor& x, int64_t height, int64_t width);

}  // namespace diffuse
