// 3×3 stride-1 convolutions with Winograd's F(4×4, 3×3) on the channel-blocked layout
// (runtime/blocked_layout.h), for CPUs where oneDNN has no Winograd kernel of its own (oneDNN 2.6
// has them for AVX-512 only; on an AVX2 CPU its direct kernel was all there was).
//
// Per 4×4 tile of output and per channel pair, Winograd computes y = Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A
// (Lavin & Gray 2016): d is the 6×6 input patch around the tile, g the 3×3 kernel; 36 products
// instead of 16 · 9 = 144. Summed over input channels, the 36 products become 36 matrix products
// [tiles × C] · [C × O]. All of it is hand-written loops over a channel block (8 or 16 channels) at
// a time, a group of 12 tiles at a time: the group's transformed patches (Bᵀ d B), their products
// with the transformed weights (G g Gᵀ, register-blocked 6 rows by 2 vectors) and the products'
// transform back (Aᵀ m A) stay in the core's caches, where whole-batch tensors of patches and
// products went to memory and back between three passes. The backward passes are the same products:
//   ∂L/∂x: the forward convolution of ∂L/∂y with the kernels turned by 180° and C, O swapped;
//   ∂L/∂g = Gᵀ[Σ_tiles (Bᵀ d B) ⊙ (A ∂L/∂y Aᵀ)]G, each thread summing its share of the tiles;
//   ∂L/∂b = Σ_{n,h,w} ∂L/∂y.
// float32 throughout; the transforms' interpolation points 0, ±1, ±2 keep the error near 1e-6
// relative to the output's magnitude for the U-Nets' widths (tests: against float64).
#pragma once

#include <torch/torch.h>

namespace diffuse {

// y = conv(x, weight, padding 1) + bias for blocked x: [N, C/B, H, W, B] float32 CPU (B 8 or 16),
// weight [O, C, 3, 3] float32 with O a multiple of B, bias [O] or undefined → [N, O/B, H, W, B]. No
// autograd: the caller's autograd function calls the two backward functions below.
torch::Tensor winograd_conv3x3_blocked(const torch::Tensor& x5, const torch::Tensor& weight, const torch::Tensor& bias);

// ∂L/∂x for ∂L/∂y `grad_y5` ([N, O/B, H, W, B]) → [N, C/B, H, W, B].
torch::Tensor winograd_conv3x3_blocked_backward_data(const torch::Tensor& grad_y5, const torch::Tensor& weight);

// ∂L/∂weight [O, C, 3, 3] and ∂L/∂bias [O] from x5 and grad_y5.
std::pair<torch::Tensor, torch::Tensor> winograd_conv3x3_blocked_backward_weights(const torch::Tensor& x5,
                                                                                   const torch::Tensor& grad_y5);

}  // namespace diffuse
