// The prompt's encoder: a small transformer over the token ids of text/tokenizer.h, trained with
// the U-Net, whose token states the U-Net's cross-attention blocks read.
//   h_0 = E[ids] + P                    (token and learned position embeddings, [B, L, D])
//   h_l = h_{l−1} + MHA(LN(h_{l−1}))    (self-attention over the tokens that are not <pad>)
//   h_l = h_l + W_2 GELU(W_1 LN(h_l))   (MLP of width 4D)
//   states = LN(h_n)
#pragma once

#include <torch/torch.h>

#include <vector>

namespace diffuse {

// The mask of a batch of token rows: true where the id is not <pad>.
torch::Tensor token_mask(const torch::Tensor& ids);

class TextEncoderLayerImpl : public torch::nn::Module {
 public:
  TextEncoderLayerImpl(int64_t width, int64_t heads);
  torch::Tensor forward(const torch::Tensor& h, const torch::Tensor& key_mask);  // [B, L, D] → same

 private:
  torch::nn::LayerNorm norm1{nullptr}, norm2{nullptr};
  torch::nn::Linear qkv{nullptr}, proj{nullptr}, fc1{nullptr}, fc2{nullptr};
  int64_t heads_;
};
TORCH_MODULE(TextEncoderLayer);

class TextEncoderImpl : public torch::nn::Module {
 public:
  TextEncoderImpl(int64_t vocab_size, int64_t max_tokens, int64_t width, int64_t layers, int64_t heads);
  // ids: [B, L] int64 with L = max_tokens → token states [B, L, width]
  torch::Tensor forward(const torch::Tensor& ids);

 private:
  torch::nn::Embedding token_embedding{nullptr};
  torch::Tensor position_embedding;  // [L, D]
  std::vector<TextEncoderLayer> layers_;
  torch::nn::LayerNorm norm_out{nullptr};
  int64_t vocab_size_, max_tokens_;
};
TORCH_MODULE(TextEncoder);

}  // namespace diffuse
