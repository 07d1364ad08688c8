// Building blocks of the DDPM U-Net (Ho et al. 2020, appendix B; the PixelCNN++ backbone).
// Each block is `XImpl : torch::nn::Module` + `TORCH_MODULE(X)`.
#pragma once

#include <torch/torch.h>

#include "diffuse/model/unet_config.h"

namespace diffuse {

// Sinusoidal embedding of the (0-based) timestep, as in the Transformer:
//   f_k = 10000^(−k/(h − shift)),  emb = [sin(t f_k), cos(t f_k)]  (k = 0..h−1, h = dim/2),
// the cosines first with flip_sin_to_cos. The DDPM paper: shift 1, sines first.
// t: [B] → [B, dim]
torch::Tensor timestep_embedding(const torch::Tensor& t, int64_t dim, bool flip_sin_to_cos = false,
                                 int64_t freq_shift = 1);

// GroupNorm → SiLU → conv3×3 → (+ time projection) → GroupNorm → SiLU → dropout → conv3×3,
// plus a 1×1 shortcut when the width changes.
class ResBlockImpl : public torch::nn::Module {
 public:
  ResBlockImpl(int64_t in_channels, int64_t out_channels, int64_t time_dim, double dropout, int64_t groups,
               double eps = 1e-5);
  // x: [B, C_in, H, W], emb: [B, time_dim] → [B, C_out, H, W]. With a skip connection (the up
  // path), the input is cat(x, skip) along channels, C_in their channels together, and the
  // concatenation happens inside the first norm's kernel where the layout allows.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& emb, const torch::Tensor& skip = {});
  void zero_last_layer();  // conv2 ← 0: the block starts as its shortcut

 private:
  torch::nn::GroupNorm norm1{nullptr}, norm2{nullptr};
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr}, shortcut{nullptr};
  torch::nn::Linear time_proj{nullptr};
  torch::nn::Dropout dropout_{nullptr};
};
TORCH_MODULE(ResBlock);

// Self-attention over the H·W positions, with a residual connection; one head:
//   h = x + W_o · V softmax(Kᵀ Q / √C)
// and with n heads each attends over its own C/n channels of Q, K and V (scale 1/√(C/n)).
class AttentionBlockImpl : public torch::nn::Module {
 public:
  AttentionBlockImpl(int64_t channels, int64_t groups, double eps = 1e-5, int64_t heads = 1);
  torch::Tensor forward(const torch::Tensor& x);  // [B, C, H, W] → same
  void zero_last_layer();  // proj_out ← 0: the block starts as the identity

 private:
  torch::nn::GroupNorm norm{nullptr};
  torch::nn::Conv2d qkv{nullptr}, proj_out{nullptr};
  int64_t heads_ = 1;
};
TORCH_MODULE(AttentionBlock);

// Cross-attention from the H·W positions to a prompt's token states, with a residual connection
// (the transformer block of latent diffusion, reduced to its cross-attention):
//   h = x + W_o · softmax(Q Kᵀ/√d + M) V,  Q = W_q GroupNorm(x),  K = W_k s,  V = W_v s
// s: the token states [B, L, D]; M = −∞ at <pad> tokens; heads of d = C/heads channels.
class CrossAttentionBlockImpl : public torch::nn::Module {
 public:
  CrossAttentionBlockImpl(int64_t channels, int64_t context_dim, int64_t groups, double eps = 1e-5, int64_t heads = 1);
  // x: [B, C, H, W], states: [B, L, D], key_mask: [B, L] bool → [B, C, H, W]
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& states, const torch::Tensor& key_mask);
  void zero_last_layer();  // proj_out ← 0: the block starts as the identity

 private:
  torch::nn::GroupNorm norm{nullptr};
  torch::nn::Conv2d to_q{nullptr}, proj_out{nullptr};
  torch::nn::Linear to_kv{nullptr};
  int64_t heads_ = 1;
};
TORCH_MODULE(CrossAttentionBlock);

// Stride-2 3×3 convolution: H → ⌈H/2⌉ with symmetric padding, ⌊H/2⌋ with the DDPM paper's
// asymmetric one (a zero row and column after the last).
class DownsampleImpl : public torch::nn::Module {
 public:
  explicit DownsampleImpl(int64_t channels, DownsamplePadding padding = DownsamplePadding::symmetric);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  torch::nn::Conv2d conv{nullptr};
  DownsamplePadding padding_;
};
TORCH_MODULE(Downsample);

// Nearest-neighbour upsampling to the skip connection's size (2× for even sizes), then conv3×3.
class UpsampleImpl : public torch::nn::Module {
 public:
  explicit UpsampleImpl(int64_t channels);
  torch::Tensor forward(const torch::Tensor& x, int64_t height, int64_t width);

 private:
  torch::nn::Conv2d conv{nullptr};
};
TORCH_MODULE(Upsample);

// DDPM initialisation of every submodule: Xavier-uniform weights (fan-average), zero biases.
void init_xavier(torch::nn::Module& module);
void init_zero(torch::nn::Conv2d& conv);

}  // namespace diffuse
