#include "diffuse/model/unet.h"

#include "diffuse/runtime/ops.h"
#include "diffuse/text/tokenizer.h"

namespace diffuse {

namespace F = torch::nn::functional;

UNetImpl::UNetImpl(const UNetConfig& config) : config_(config) {
  validate(config_);
  const auto& c = config_;
  const int64_t time_dim = c.time_embed_dim();
  auto res_block = [&](int64_t in, int64_t out) {
    return ResBlock(in, out, time_dim, c.dropout, c.norm_groups, c.norm_eps);
  };
  auto attention_block = [&](int64_t width) {
    return AttentionBlock(width, c.norm_groups, c.norm_eps, c.attention_heads(width));
  };
  auto cross_attention_block = [&](int64_t width) {
    return CrossAttentionBlock(width, c.cross_attention_dim, c.norm_groups, c.norm_eps, c.attention_heads(width));
  };

  time_fc1 = register_module("time_fc1", torch::nn::Linear(c.channels, time_dim));
  time_fc2 = register_module("time_fc2", torch::nn::Linear(time_dim, time_dim));
  if (c.num_classes > 0) {  // with null_class, one extra row: the "no label" class used for guidance
    label_embedding = register_module("label_embedding", torch::nn::Embedding(c.label_rows(), time_dim));
  }
  if (c.text_conditional()) {
    text_encoder = register_module("text_encoder", TextEncoder(c.text_vocab_size, c.text_max_tokens,
                                                               c.cross_attention_dim, c.text_layers, c.text_heads));
    text_pool = register_module("text_pool", torch::nn::Linear(c.cross_attention_dim, time_dim));
  }
  conv_in = register_module(
      "conv_in",
      torch::nn::Conv2d(torch::nn::Conv2dOptions(c.in_channels + c.extra_in_channels, c.channels, 3).padding(1)));

  // Down path; remember the width of every tensor pushed onto the skip stack.
  std::vector<int64_t> skip_channels{c.channels};
  int64_t width = c.channels, resolution = c.image_size;
  const int64_t levels = static_cast<int64_t>(c.channel_mult.size());
  for (int64_t level = 0; level < levels; ++level) {
    const int64_t out = c.channels * c.channel_mult[level];
    for (int64_t b = 0; b < c.num_res_blocks; ++b) {
      Stage s;
      const std::string name = "down_" + std::to_string(level) + "_" + std::to_string(b);
      s.res = register_module(name + "_res", res_block(width, out));
      width = out;
      if (c.has_attention_at(resolution)) s.attn = register_module(name + "_attn", attention_block(width));
      if (c.has_cross_attention_at(resolution))
        s.cross = register_module(name + "_cross", cross_attention_block(width));
      down_.push_back(s);
      skip_channels.push_back(width);
    }
    if (level != levels - 1) {
      Stage s;
      s.down =
          register_module("down_" + std::to_string(level) + "_downsample", Downsample(width, c.downsample_padding));
      down_.push_back(s);
      skip_channels.push_back(width);
      resolution = c.downsampled(resolution);
    }
  }

  mid_res1 = register_module("mid_res1", res_block(width, width));
  if (c.mid_attention) mid_attn = register_module("mid_attn", attention_block(width));
  if (c.text_conditional() && c.mid_cross_attention)
    mid_cross = register_module("mid_cross", cross_attention_block(width));
  mid_res2 = register_module("mid_res2", res_block(width, width));

  // Up path: num_res_blocks + 1 blocks per level, each eating one skip connection.
  std::vector<int64_t> resolutions{c.image_size};
  for (int64_t level = 1; level < levels; ++level) resolutions.push_back(c.downsampled(resolutions.back()));
  for (int64_t level = levels - 1; level >= 0; --level) {
    const int64_t out = c.channels * c.channel_mult[level];
    for (int64_t b = 0; b <= c.num_res_blocks; ++b) {
      Stage s;
      const std::string name = "up_" + std::to_string(level) + "_" + std::to_string(b);
      const int64_t skip = skip_channels.back();
      skip_channels.pop_back();
      s.res = register_module(name + "_res", res_block(width + skip, out));
      width = out;
      if (c.has_attention_at(resolutions[level])) s.attn = register_module(name + "_attn", attention_block(width));
      if (c.has_cross_attention_at(resolutions[level])) {
        s.cross = register_module(name + "_cross", cross_attention_block(width));
      }
      up_.push_back(s);
    }
    if (level != 0) {
      Stage s;
      s.up = register_module("up_" + std::to_string(level) + "_upsample", Upsample(width));
      up_.push_back(s);
    }
  }

  norm_out = register_module("norm_out",
                             torch::nn::GroupNorm(torch::nn::GroupNormOptions(c.norm_groups, width).eps(c.norm_eps)));
  conv_out =
      register_module("conv_out", torch::nn::Conv2d(torch::nn::Conv2dOptions(width, c.in_channels, 3).padding(1)));

  // DDPM initialisation; layers that end a residual branch start at zero.
  init_xavier(*this);
  for (auto& m : modules(/*include_self=*/false)) {
    if (auto* r = m->as<ResBlockImpl>()) r->zero_last_layer();
    if (auto* a = m->as<AttentionBlockImpl>()) a->zero_last_layer();
    if (auto* a = m->as<CrossAttentionBlockImpl>()) a->zero_last_layer();
  }
  if (text_encoder) {  // the encoder's own initialisation: embeddings N(0, 0.02²)
    torch::NoGradGuard no_grad;
    for (auto& p : text_encoder->named_parameters()) {
      if (p.key().find("embedding") != std::string::npos) p.value().normal_(0.0, 0.02);
    }
  }
  init_zero(conv_out);
}

torch::Tensor UNetImpl::forward(const torch::Tensor& x_t, const torch::Tensor& t, const torch::Tensor& y) {
  TORCH_CHECK(x_t.dim() == 4 && x_t.size(1) == config_.in_channels, "UNet: expected [B, ", config_.in_channels,
              ", H, W] input, got ", x_t.sizes());
  torch::Tensor condition;  // the condition's channels, for a model that takes them
  if (config_.extra_in_channels > 0) {
    condition = y.defined() ? y
                            : torch::zeros({x_t.size(0), config_.extra_in_channels, x_t.size(2), x_t.size(3)},
                                           x_t.options());  // ∅ at x_t's size
    TORCH_CHECK(condition.dim() == 4 && condition.size(0) == x_t.size(0) &&
                    condition.size(1) == config_.extra_in_channels && condition.size(2) == x_t.size(2) &&
                    condition.size(3) == x_t.size(3),
                "UNet: expected [", x_t.size(0), ", ", config_.extra_in_channels, ", ", x_t.size(2), ", ", x_t.size(3),
                "] condition channels, got ", condition.sizes());
  }
  // The weights' dtype: float32, or bf16 where a sampler cast the whole network (the sinusoids
  // are computed in float32 either way).
  const auto dtype = conv_in->weight.scalar_type();
  // Time (and label) embedding: [B] → [B, 4·ch]
  auto emb = time_fc2(F::silu(
      time_fc1(timestep_embedding(t, config_.channels, config_.flip_sin_to_cos, config_.freq_shift).to(dtype))));
  if (label_embedding) {  // no labels given: the "no label" class ∅ = num_classes
    TORCH_CHECK(y.defined() || config_.null_class,
                "UNet: this model was trained without an unconditional class; give every image a label");
    TORCH_CHECK(!y.defined() || y.dim() == 1, "UNet: expected [B] class labels, got ", y.sizes());
    emb = emb + label_embedding(y.defined() ? y : null_condition(x_t.size(0), x_t.device()));
  }
  torch::Tensor states, key_mask;  // the prompt's token states [B, L, D] and which are not <pad>
  if (text_encoder) {
    const auto ids = y.defined() ? y : null_condition(x_t.size(0), x_t.device());
    TORCH_CHECK(ids.dim() == 2 && ids.size(0) == x_t.size(0), "UNet: expected [", x_t.size(0), ", ",
                config_.text_max_tokens, "] token ids, got ", ids.sizes());
    states = text_encoder(ids).to(dtype);
    key_mask = token_mask(ids);
    // emb += W_p mean_j s_j over the tokens that are not <pad>
    const auto weights = key_mask.to(states.scalar_type()).unsqueeze(2);
    emb = emb + text_pool((states * weights).sum(1) / weights.sum(1));
  }

  // the condition's channels (a masked image, a low-resolution one) join x_t's at the input
  const auto x = condition.defined() ? torch::cat({x_t, condition.to(x_t.scalar_type())}, 1).to(dtype) : x_t.to(dtype);
  // The pass's plan (layout and kernels, runtime/ops.h), for every op below: every width is a
  // multiple of config_.channels.
  const ForwardPass pass(plan_forward_pass(x, memory_format_, config_.channels));
  auto h = convolve_input(conv_in, x);
  std::vector<torch::Tensor> skips{h};
  for (auto& s : down_) {
    if (s.down) {
      h = s.down(h);
    } else {
      h = s.res(h, emb);
      if (s.attn) h = s.attn(h);
      if (s.cross) h = s.cross(h, states, key_mask);
    }
    skips.push_back(h);
  }

  h = mid_res1(h, emb);
  if (mid_attn) h = mid_attn(h);
  if (mid_cross) h = mid_cross(h, states, key_mask);
  h = mid_res2(h, emb);

  for (auto& s : up_) {
    if (s.up) {
      const auto& next_skip = skips.back();
      h = s.up(h, next_skip.size(2), next_skip.size(3));
    } else {
      h = s.res(h, emb, skips.back());  // the block's input: cat(h, skip) along channels
      skips.pop_back();
      if (s.attn) h = s.attn(h);
      if (s.cross) h = s.cross(h, states, key_mask);
    }
  }
  // the output in NCHW whatever the pass's layout
  return convolve(conv_out, norm_silu(norm_out, h)).to(x_t.scalar_type()).contiguous();
}

torch::Tensor UNetImpl::null_condition(int64_t n, torch::Device device) const {
  const auto longs = torch::dtype(torch::kLong).device(device);
  if (config_.num_classes > 0) return torch::full({n}, config_.num_classes, longs);
  if (config_.text_conditional()) {  // the empty prompt: [<start>, <pad>, …]
    auto ids = torch::full({n, config_.text_max_tokens}, Tokenizer::kPad, longs);
    ids.select(1, 0).fill_(Tokenizer::kStart);
    return ids;
  }
  if (config_.extra_in_channels > 0) {  // nothing known: zero condition channels
    return torch::zeros({n, config_.extra_in_channels, config_.image_size, config_.image_size},
                        torch::dtype(torch::kFloat32).device(device));
  }
  return {};
}

void UNetImpl::set_memory_format(MemoryFormat format) {
  torch::NoGradGuard no_grad;
  memory_format_ = format;
  for (auto& p : parameters()) {
    if (p.dim() == 4) p.set_data(p.contiguous(torch_memory_format(format)));
  }
}

int64_t UNetImpl::parameter_count() const {
  int64_t n = 0;
  for (const auto& p : parameters()) n += p.numel();
  return n;
}

}  // namespace diffuse
