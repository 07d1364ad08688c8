#include "diffuse/model/unet_blocks.h"

#include "diffuse/runtime/ops.h"

#include <cmath>

namespace diffuse {

namespace F = torch::nn::functional;

torch::Tensor timestep_embedding(const torch::Tensor& t, int64_t dim, bool flip_sin_to_cos, int64_t freq_shift) {
  TORCH_CHECK(dim % 2 == 0, "timestep_embedding: dim must be even, got ", dim);
  const int64_t half = dim / 2;
  TORCH_CHECK(half - freq_shift >= 1, "timestep_embedding: dim ", dim, " too small for freq_shift ", freq_shift);
  const double scale = std::log(10000.0) / static_cast<double>(half - freq_shift);
  // f_k = exp(−k · log(10000)/(h − shift))
  auto freqs = torch::exp(torch::arange(half, torch::dtype(torch::kFloat32).device(t.device())) * -scale);
  auto args = t.to(torch::kFloat32).unsqueeze(1) * freqs.unsqueeze(0);  // [B, h]
  return flip_sin_to_cos ? torch::cat({torch::cos(args), torch::sin(args)}, 1)
                         : torch::cat({torch::sin(args), torch::cos(args)}, 1);
}

static torch::nn::Conv2d conv(int64_t in, int64_t out, int64_t kernel, int64_t stride = 1) {
  return torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, kernel).stride(stride).padding(kernel / 2));
}

void init_xavier(torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  for (auto& m : module.modules(/*include_self=*/false)) {
    if (auto* c = m->as<torch::nn::Conv2d>()) {
      torch::nn::init::xavier_uniform_(c->weight);
      torch::nn::init::zeros_(c->bias);
    } else if (auto* l = m->as<torch::nn::Linear>()) {
      torch::nn::init::xavier_uniform_(l->weight);
      torch::nn::init::zeros_(l->bias);
    }
  }
}

void init_zero(torch::nn::Conv2d& c) {
  torch::NoGradGuard no_grad;
  c->weight.zero_();
  c->bias.zero_();
}

static torch::nn::GroupNorm group_norm_module(int64_t groups, int64_t channels, double eps) {
  return torch::nn::GroupNorm(torch::nn::GroupNormOptions(groups, channels).eps(eps));
}

ResBlockImpl::ResBlockImpl(int64_t in_channels, int64_t out_channels, int64_t time_dim, double dropout,
                           int64_t groups, double eps) {
  norm1 = register_module("norm1", group_norm_module(groups, in_channels, eps));
  conv1 = register_module("conv1", conv(in_channels, out_channels, 3));
  time_proj = register_module("time_proj", torch::nn::Linear(time_dim, out_channels));
  norm2 = register_module("norm2", group_norm_module(groups, out_channels, eps));
  dropout_ = register_module("dropout", torch::nn::Dropout(dropout));
  conv2 = register_module("conv2", conv(out_channels, out_channels, 3));
  if (in_channels != out_channels) shortcut = register_module("shortcut", conv(in_channels, out_channels, 1));
}

torch::Tensor ResBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& emb, const torch::Tensor& skip) {
  // h = conv1(SiLU(GroupNorm(x)))          (on the up path x is cat(x, skip) along channels)
  const auto [normed, input] =
      skip.defined() ? norm_silu_and_input_of_cat(norm1, x, skip) : norm_silu_and_input(norm1, x);
  // + W_t SiLU(emb), the time shift, added by the second norm
  const auto [h, shift] = convolve_with_shift(conv1, normed, time_proj(F::silu(emb)));
  // out = conv2(dropout(SiLU(GroupNorm(h + shift)))) + shortcut(x)
  const auto residual = shortcut ? convolve(shortcut, input) : input;
  return convolve(conv2, norm_silu_dropout(norm2, h, shift, dropout_), residual);
}

void ResBlockImpl::zero_last_layer() { init_zero(conv2); }

AttentionBlockImpl::AttentionBlockImpl(int64_t channels, int64_t groups, double eps, int64_t heads) : heads_(heads) {
  TORCH_CHECK(heads >= 1 && channels % heads == 0, "AttentionBlock: ", heads, " heads do not divide ", channels,
              " channels");
  norm = register_module("norm", group_norm_module(groups, channels, eps));
  qkv = register_module("qkv", conv(channels, 3 * channels, 1));  // q, k and v in one 1×1 conv
  proj_out = register_module("proj_out", conv(channels, channels, 1));
}

torch::Tensor AttentionBlockImpl::forward(const torch::Tensor& x) {
  // [q; k; v] = W_qkv GroupNorm(x);  h = x + W_o · attention(q, k, v)
  const auto qkv_out = convolve(qkv, group_norm(norm, x));
  return convolve(proj_out, self_attention(qkv_out, heads_, x), x);
}

void AttentionBlockImpl::zero_last_layer() { init_zero(proj_out); }

CrossAttentionBlockImpl::CrossAttentionBlockImpl(int64_t channels, int64_t context_dim, int64_t groups, double eps,
                                                 int64_t heads)
    : heads_(heads) {
  TORCH_CHECK(heads >= 1 && channels % heads == 0, "CrossAttentionBlock: ", heads, " heads do not divide ", channels,
              " channels");
  norm = register_module("norm", group_norm_module(groups, channels, eps));
  to_q = register_module("to_q", conv(channels, channels, 1));
  to_kv = register_module("to_kv", torch::nn::Linear(context_dim, 2 * channels));  // k and v in one product
  proj_out = register_module("proj_out", conv(channels, channels, 1));
}

torch::Tensor CrossAttentionBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& states,
                                               const torch::Tensor& key_mask) {
  // q = W_q GroupNorm(x);  [k; v] = W_kv s;  h = x + W_o · attention(q, k, v)
  const auto q = convolve(to_q, group_norm(norm, x));
  const auto kv = to_kv(states).chunk(2, -1);
  return convolve(proj_out, cross_attention(q, kv[0], kv[1], key_mask, heads_, x), x);
}

void CrossAttentionBlockImpl::zero_last_layer() { init_zero(proj_out); }

DownsampleImpl::DownsampleImpl(int64_t channels, DownsamplePadding padding) : padding_(padding) {
  // asymmetric: padding 0 here, the pad added in forward
  const int64_t pad = padding_ == DownsamplePadding::symmetric ? 1 : 0;
  conv = register_module("conv",
                         torch::nn::Conv2d(torch::nn::Conv2dOptions(channels, channels, 3).stride(2).padding(pad)));
}

torch::Tensor DownsampleImpl::forward(const torch::Tensor& x) {
  if (padding_ == DownsamplePadding::symmetric) return convolve(conv, x);
  return convolve_padded(conv, x, {0, 1, 0, 1});  // a zero column on the right, a zero row below
}

UpsampleImpl::UpsampleImpl(int64_t channels) { conv = register_module("conv", diffuse::conv(channels, channels, 3)); }

torch::Tensor UpsampleImpl::forward(const torch::Tensor& x, int64_t height, int64_t width) {
  return convolve(conv, upsample_nearest(x, height, width));
}

}  // namespace diffuse
