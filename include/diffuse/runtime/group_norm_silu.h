// GroupNorm followed by SiLU in one kernel, on CPU activations channel-blocked in float32
// (runtime/blocked_layout.h) or channels-last in bf16 (NHWC), or NCHW in bf16, with an optional
// per-channel shift added first (the ResBlock's time embedding):
//   u = x + s[n, c]                                      (s optional)
//   μ_ng = mean of u over group g's channels and all pixels,  σ²_ng likewise (biased)
//   z = (u − μ_ng) / √(σ²_ng + ε) · γ_c + β_c
//   y = SiLU(z) = z · sigmoid(z),  then dropout (optional): y · keep / (1 − p)
// LibTorch computes these as three or four passes over memory (add, GroupNorm's statistics,
// its normalisation, SiLU), each writing a new tensor. Here: one pass for the statistics, one
// that writes y; the backward pass likewise reads x and ∂L/∂y twice and writes ∂L/∂x once, and
// only x is kept for it (LibTorch keeps GroupNorm's input and output).
//
// Backward, with x̂ = (u − μ)/σ, M = the group's element count, sums over the group:
//   ∂L/∂z = ∂L/∂y · sig(z) (1 + z (1 − sig(z)))
//   ∂L/∂x = (1/σ) (γ ∂L/∂z − (1/M) Σ γ ∂L/∂z − x̂ (1/M) Σ γ ∂L/∂z x̂)
//   ∂L/∂γ_c = Σ_{n,hw} ∂L/∂z x̂,   ∂L/∂β_c = Σ_{n,hw} ∂L/∂z,   ∂L/∂s[n, c] = Σ_hw ∂L/∂x
#pragma once

#include <torch/torch.h>

#include <utility>

namespace diffuse {

// x5: [N, C/B, H, W, B] float32 CPU (B 8 or 16); shift: [N, C] or undefined; gamma, beta: [C];
// groups divides C; dropout: the probability p ∈ [0, 1) of zeroing an element (0: none). The
// dropout mask is a hash of each element's index and a seed drawn from LibTorch's default
// generator, recomputed in backward rather than stored. Differentiable in x5, shift, gamma and
// beta. Returns y in x5's layout.
torch::Tensor group_norm_silu_blocked(const torch::Tensor& x5, const torch::Tensor& shift, const torch::Tensor& gamma,
                                      const torch::Tensor& beta, int64_t groups, double eps, double dropout = 0.0);

// GroupNorm alone, z above (no shift, no SiLU, no dropout), on float32 blocked activations: the
// attention block's norm, which then needs no re-order to NCHW and back around LibTorch's.
// Differentiable in x5, gamma and beta.
torch::Tensor group_norm_blocked(const torch::Tensor& x5, const torch::Tensor& gamma, const torch::Tensor& beta,
                                 int64_t groups, double eps);

// y as above (no shift, no dropout), and x5 again, for a residual connection to read x through:
// the gradient that reaches the second output is added to ∂L/∂x inside the backward kernel
// instead of in a separate pass over memory. Without a gradient to record: {y, x5}.
std::pair<torch::Tensor, torch::Tensor> group_norm_silu_blocked_and_input(const torch::Tensor& x5,
                                                                          const torch::Tensor& gamma,
                                                                          const torch::Tensor& beta, int64_t groups,
                                                                          double eps);

// The same for x = cat(a, b) along channels, a: [N, A/B, H, W, B], b: [N, C_b/B, H, W, B]
// (a U-Net's up-path input and its skip connection): {y, x}, x written by the kernel as it reads
// a and b, and backward writing ∂L/∂a and ∂L/∂b directly. Equal to
// group_norm_silu_blocked_and_input(torch::cat({a, b}, 1), …) without the concatenation's passes
// over memory and the copies of its gradient's two strided halves.
std::pair<torch::Tensor, torch::Tensor> group_norm_silu_blocked_cat_and_input(const torch::Tensor& a5,
                                                                              const torch::Tensor& b5,
                                                                              const torch::Tensor& gamma,
                                                                              const torch::Tensor& beta, int64_t groups,
                                                                              double eps);

// The same two for bf16 channels-last (NHWC) CPU tensors, the layout oneDNN's bf16 convolutions
// read and write as it lies (runtime/onednn_conv.h's onednn_conv_nhwc_bf16): x [N, C, H, W] bf16
// in channels-last memory, C a multiple of 16 (a pixel's channels are read 16 at a time). The
// same kernel as the blocked one, walking 16 channels of one image with a pixel stride of C
// instead of 16; statistics and arithmetic in float32, x read and y written in bf16. ∂L/∂x in
// bf16, the parameters' gradients in float32.
torch::Tensor group_norm_silu_nhwc_bf16(const torch::Tensor& x, const torch::Tensor& shift, const torch::Tensor& gamma,
                                        const torch::Tensor& beta, int64_t groups, double eps, double dropout = 0.0);
std::pair<torch::Tensor, torch::Tensor> group_norm_silu_nhwc_bf16_and_input(const torch::Tensor& x,
                                                                            const torch::Tensor& gamma,
                                                                            const torch::Tensor& beta, int64_t groups,
                                                                            double eps);

// Whether those take x: a bf16 channels-last CPU tensor, C a multiple of 16, float32 γ.
bool group_norm_silu_nhwc_bf16_applies(const torch::Tensor& x, const torch::Tensor& gamma);

// The same without dropout for bfloat16 NCHW CPU tensors (the CPU's bf16 autocast path):
// statistics and arithmetic in float32, x read and y written in bf16, so that no float32 copy of
// x, no separate SiLU and no casts sit between the two convolutions. x: [N, C, H, W] bf16; shift
// [N, C] (any float dtype) or undefined; gamma, beta: [C]. Differentiable in x, shift, gamma and
// beta (∂L/∂x in bf16, the others in float32). Returns y in bf16.
torch::Tensor group_norm_silu_nchw_bf16(const torch::Tensor& x, const torch::Tensor& shift, const torch::Tensor& gamma,
                                        const torch::Tensor& beta, int64_t groups, double eps);

// Whether that kernel takes x: a contiguous bf16 NCHW CPU tensor, float32 γ.
bool group_norm_silu_nchw_bf16_applies(const torch::Tensor& x, const torch::Tensor& gamma);

}  // namespace diffuse
