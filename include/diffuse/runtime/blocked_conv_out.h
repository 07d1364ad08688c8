// The U-Net's last convolution (conv_out: 32 or 128 channels in, 1 or 3 out, 3×3) read straight
// from channel-blocked activations (runtime/blocked_layout.h), output NCHW:
//   y[n, o, h, w] = b[o] + Σ_c Σ_{i,j} W[o, c, i, j] · x[n, c, h + i − p, w + j − p],  p = k/2
// oneDNN's blocked kernels want output channels in whole blocks, and LibTorch's convolution for
// one or three outputs is slow for its few FLOPs, with re-orders around it. Here every
// pixel's B channels (a block) are one vector, and all three passes are plain loops over the taps:
//   ∂L/∂x[n, c, h, w] = Σ_o Σ_{i,j} W[o, c, i, j] · ∂L/∂y[n, o, h − i + p, w − j + p]
//   ∂L/∂W[o, c, i, j] = Σ_{n,h,w} ∂L/∂y[n, o, h, w] · x[n, c, h + i − p, w + j − p]
//   ∂L/∂b[o] = Σ_{n,h,w} ∂L/∂y[n, o, h, w]
#pragma once

#include <torch/torch.h>

namespace diffuse {

// x5: [N, C/B, H, W, B] float32 CPU (B 8 or 16); weight: [O, C, k, k] with k odd; bias: [O] or undefined.
// Stride 1, padding k/2. Differentiable in x5, weight and bias. Returns [N, O, H, W].
torch::Tensor conv_blocked_to_nchw(const torch::Tensor& x5, const torch::Tensor& weight, const torch::Tensor& bias);

}  // namespace diffuse
