// Nearest-neighbour upsampling of channel-blocked float32 CPU activations (runtime/blocked_layout.h)
// to exactly twice the height and width, the U-Net's Upsample before its convolution:
//   y[n, cb, i, j, l] = x[n, cb, ⌊i/2⌋, ⌊j/2⌋, l]
//   ∂L/∂x[n, cb, h, w, l] = Σ_{a,b ∈ {0,1}} ∂L/∂y[n, cb, 2h + a, 2w + b, l]
// A pixel's B channels (a block) are one vector, written four times forward and summed from four places
// backward, instead of LibTorch's 3-D nearest kernel or a broadcast copy with strided-view
// additions backward, both slow on these small shapes.
#pragma once

#include <torch/torch.h>

namespace diffuse {

// x5: [N, C/B, H, W, B] float32 CPU, B 8 or 16. Returns [N, C/B, 2H, 2W, B]; differentiable in x5.
torch::Tensor upsample_twice_blocked(const torch::Tensor& x5);

}  // namespace diffuse
