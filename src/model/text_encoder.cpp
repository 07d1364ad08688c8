#include "diffuse/model/text_encoder.h"

#include "diffuse/runtime/ops.h"
#include "diffuse/text/tokenizer.h"

namespace diffuse {

namespace F = torch::nn::functional;

torch::Tensor token_mask(const torch::Tensor& ids) { return ids != Tokenizer::kPad; }

TextEncoderLayerImpl::TextEncoderLayerImpl(int64_t width, int64_t heads) : heads_(heads) {
  norm1 = register_module("norm1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({width})));
  qkv = register_module("qkv", torch::nn::Linear(width, 3 * width));
  proj = register_module("proj", torch::nn::Linear(width, width));
  norm2 = register_module("norm2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({width})));
  fc1 = register_module("fc1", torch::nn::Linear(width, 4 * width));
  fc2 = register_module("fc2", torch::nn::Linear(4 * width, width));
}

torch::Tensor TextEncoderLayerImpl::forward(const torch::Tensor& h, const torch::Tensor& key_mask) {
  const auto parts = qkv(norm1(h)).chunk(3, -1);
  auto out = h + proj(token_attention(parts[0], parts[1], parts[2], key_mask, heads_));
  return out + fc2(F::gelu(fc1(norm2(out))));
}

TextEncoderImpl::TextEncoderImpl(int64_t vocab_size, int64_t max_tokens, int64_t width, int64_t layers, int64_t heads)
    : vocab_size_(vocab_size), max_tokens_(max_tokens) {
  token_embedding = register_module("token_embedding", torch::nn::Embedding(vocab_size, width));
  position_embedding = register_parameter("position_embedding", torch::randn({max_tokens, width}) * 0.02);
  for (int64_t l = 0; l < layers; ++l) {
    layers_.push_back(register_module("layer_" + std::to_string(l), TextEncoderLayer(width, heads)));
  }
  norm_out = register_module("norm_out", torch::nn::LayerNorm(torch::nn::LayerNormOptions({width})));
}

torch::Tensor TextEncoderImpl::forward(const torch::Tensor& ids) {
  TORCH_CHECK(ids.dim() == 2 && ids.size(1) == max_tokens_ && ids.scalar_type() == torch::kLong,
              "TextEncoder: expected [B, ", max_tokens_, "] int64 token ids, got ", ids.scalar_type(), " ",
              ids.sizes());
  const auto mask = token_mask(ids);
  if (!ids.is_cuda()) {  // (on a GPU the checks would wait for the device, and break a CUDA graph's capture)
    TORCH_CHECK(ids.numel() == 0 || (ids.min().item<int64_t>() >= 0 && ids.max().item<int64_t>() < vocab_size_),
                "TextEncoder: ids must be in [0, ", vocab_size_, ")");
    TORCH_CHECK(mask.any(1).all().item<bool>(), "TextEncoder: a row of ids is all <pad> (rows start with <start>)");
  }
  auto h = token_embedding(ids) + position_embedding.unsqueeze(0);
  for (auto& layer : layers_) h = layer(h, mask);
  return norm_out(h);
}

}  // namespace diffuse
