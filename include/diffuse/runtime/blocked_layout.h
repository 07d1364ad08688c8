// Activations in oneDNN's channel-blocked layout (nChw16c), held as ordinary tensors
//   x5[n, c / 16, h, w, c % 16] = x[n, c, h, w]        shape [N, C/16, H, W, 16]
// so that 16 channels of one pixel lie side by side: one AVX-512 register, and the layout
// oneDNN's Winograd and direct convolutions read and write natively. Between two such
// convolutions (a ResBlock's conv1 → GroupNorm → SiLU → conv2) activations stay blocked and
// nobody re-orders them; see runtime/group_norm_silu.h and onednn_conv3x3_blocked.
#pragma once

#include <torch/torch.h>

namespace diffuse {

constexpr int64_t kChannelBlock = 16;

// [N, C, H, W] → [N, C/16, H, W, 16] (C a multiple of 16), differentiable.
torch::Tensor to_blocked(const torch::Tensor& x);

// [N, C/16, H, W, 16] → [N, C, H, W] (contiguous), differentiable.
torch::Tensor from_blocked(const torch::Tensor& x5);

}  // namespace diffuse
