// The U-Net's first convolution (conv_in: 1 or 3 channels in, 32 or 128 out, 3×3) from an NCHW
// image straight into channel-blocked activations (runtime/blocked_layout.h):
//   y5[n, o/B, h, w, o%B] = b[o] + Σ_c Σ_{i,j} W[o, c, i, j] · x[n, c, h + i − p, w + j − p]
// LibTorch's convolution for one input channel is slow for its few FLOPs, and its output and
// gradient need re-orders to and from the blocked layout. Here B output channels are one vector, each
// input pixel a broadcast scalar:
//   ∂L/∂W[o, c, i, j] = Σ_{n,h,w} ∂L/∂y[n, o, h, w] · x[n, c, h + i − p, w + j − p]
//   ∂L/∂b[o] = Σ_{n,h,w} ∂L/∂y[n, o, h, w]
//   ∂L/∂x[n, c, h, w] = Σ_o Σ_{i,j} W[o, c, i, j] · ∂L/∂y[n, o, h − i + p, w − j + p]
#pragma once

#include <torch/torch.h>

namespace diffuse {

// x: [N, C, H, W] float32 CPU; weight: [O, C, k, k] with O a multiple of B and k odd; bias: [O] or
// undefined. Stride 1, padding k/2. Differentiable in x, weight and bias. Returns [N, O/B, H, W, B],
// B = `block` (8 or 16), channel_block() unless given.
torch::Tensor conv_nchw_to_blocked(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                                   int64_t block = 0);

}  // namespace diffuse
