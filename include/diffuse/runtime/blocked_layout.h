// Activations in oneDNN's channel-blocked layout (nChw16c or nChw8c), held as ordinary tensors
//   x5[n, c / B, h, w, c % B] = x[n, c, h, w]        shape [N, C/B, H, W, B]
// so that B channels of one pixel lie side by side: one vector register (B = 16 with AVX-512,
// B = 8 with AVX2), and the layout oneDNN's convolutions read and write natively on that CPU.
// Between two such convolutions (a ResBlock's conv1 → GroupNorm → SiLU → conv2) activations stay
// blocked and nobody re-orders them; see runtime/group_norm_silu.h and onednn_conv3x3_blocked.
// Every kernel reads B from its tensor (x5.size(4)); channel_block() is the B new ones get.
#pragma once

#include <torch/torch.h>

namespace diffuse {

// B for this CPU: the block oneDNN's float32 convolutions take natively here (16 where it runs
// AVX-512 kernels, 8 with AVX2), or DIFFUSE_CHANNEL_BLOCK=8|16; 16 in a build without oneDNN.
int64_t channel_block();

// [N, C, H, W] → [N, C/B, H, W, B] (C a multiple of B; B = channel_block() unless given),
// differentiable.
torch::Tensor to_blocked(const torch::Tensor& x, int64_t block = 0);

// [N, C/B, H, W, B] → [N, C, H, W] (contiguous), differentiable.
torch::Tensor from_blocked(const torch::Tensor& x5);

// That t (called `name` in the message of `who`) is a float32 CPU tensor blocked by 8 or 16, what
// the blocked kernels take.
void check_blocked_float32(const char* who, const char* name, const torch::Tensor& t);

}  // namespace diffuse
