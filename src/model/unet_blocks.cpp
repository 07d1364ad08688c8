#include "diffuse/model/unet_blocks.h"

#include "diffuse/model/layout_ops.h"
#include "diffuse/runtime/attention.h"
#include "diffuse/runtime/blocked_layout.h"
#include "diffuse/runtime/group_norm_cuda.h"
#include "diffuse/runtime/group_norm_silu.h"
#include "diffuse/util/environment.h"

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

// GroupNorm in its weights' precision: under bf16 autocast the convolutions hand it bf16, which
// CPU autocast (unlike CUDA's) does not cast back, and normalising in float32 is the safe choice.
// Channels-last inference on a GPU takes the hand-written kernel (float32 statistics, output in
// x's dtype); blocked activations the CPU's fused kernel without its SiLU.
torch::Tensor group_norm(torch::nn::GroupNorm& norm, const torch::Tensor& x) {
  const int64_t groups = norm->options.num_groups();
  if (is_blocked(x)) return group_norm_blocked(x, norm->weight, norm->bias, groups, norm->options.eps());
  if (cuda_group_norm_applies(x, norm->weight, norm->bias, {}, groups)) {  // channels-last inference on a GPU
    return group_norm_cuda(x, {}, norm->weight, norm->bias, groups, norm->options.eps(), /*silu=*/false);
  }
  return norm(x.to(norm->weight.scalar_type()));
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

// conv1's bias is a per-channel constant like the time shift: on a GPU it joins the shift, which
// the norm adds anyway, instead of costing LibTorch's unvectorised broadcasting pass after the
// convolution, and a reduction in backward (profiled on an H200, docs/PERFORMANCE.md). On the
// CPU the kernels add the bias for free. DIFFUSE_CUDA_BIAS_IN_SHIFT=0 turns it off (to measure it;
// read on every GPU call, a getenv against a kernel launch, so that `bench --alternate` can pair it).
static bool bias_joins_time_shift(const torch::Tensor& normed) {
  return normed.is_cuda() && !env_equals("DIFFUSE_CUDA_BIAS_IN_SHIFT", "0");
}

torch::Tensor ResBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& emb, const torch::Tensor& skip) {
  const auto [normed, x_for_residual] =
      skip.defined() ? norm_silu_and_input_of_cat(norm1, x, skip) : norm_silu_and_input(norm1, x);
  auto time_shift = time_proj(F::silu(emb));  // [B, C_out], added to h before the second norm
  torch::Tensor h;
  if (bias_joins_time_shift(normed)) {
    h = convolve_without_bias(conv1, normed);
    time_shift = time_shift + conv1->bias;
  } else {
    h = convolve(conv1, normed);
  }
  // out = residual + conv2(…): added inside the convolution's bias pass where that applies
  auto residual = shortcut ? convolve(shortcut, x_for_residual) : x_for_residual;
  return convolve(conv2, norm_silu_dropout(norm2, h, time_shift, dropout_), residual);
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
  const bool blocked = is_blocked(x);
  const auto B = x.size(0), H = x.size(2), W = x.size(3);
  const auto C = blocked ? x.size(1) * x.size(4) : x.size(1);
  // Blocked activations: the norm and the 1×1 convolutions run on the blocked layout (oneDNN's
  // convolutions; LibTorch's took 0.2–0.5 ms each for these small shapes), the products on NCHW,
  // which they want as [B, C, N].
  auto qkv_out = blocked ? from_blocked(convolve(qkv, group_norm(norm, x))) : convolve(qkv, group_norm(norm, x));
  const auto channels_last = torch::MemoryFormat::ChannelsLast;
  if (heads_ == 1 && qkv_out.is_cuda() && qkv_out.is_contiguous(channels_last) && !qkv_out.is_contiguous()) {
    // Channels-last on a GPU: qkv_out is [B, N, 3C] in memory, so q, k and v are strided views of
    // it, and the product's [B, N, C] is h in channels-last: no re-ordering copies (on an H200 the
    // NCHW route below copied 0.15 ms per block at batch 256).
    const auto tokens = qkv_out.permute({0, 2, 3, 1}).reshape({B, H * W, 3 * C});  // a view
    const auto out = dot_product_attention_tokens(tokens.narrow(2, 0, C), tokens.narrow(2, C, C),
                                                  tokens.narrow(2, 2 * C, C));  // [B, N, C]
    return convolve(proj_out, out.reshape({B, H, W, C}).permute({0, 3, 1, 2}), x);
  }
  // Heads as a batch dimension: [B, 3, C, N] → q, k, v of [B·n, C/n, N], head h of image b at b·n + h.
  // unbind, not three selects: its backward stacks the three gradients in one copy, where each
  // select's backward zero-filled a tensor of all three and the three were then added
  const auto qkv_heads = heads_ == 1 ? qkv_out.reshape({B, 3, C, H * W})
                                     : qkv_out.reshape({B, 3, heads_, C / heads_, H * W})
                                           .transpose(1, 2)
                                           .reshape({B * heads_, 3, C / heads_, H * W});
  const auto qkv_parts = qkv_heads.unbind(1);
  const auto &q = qkv_parts[0], &k = qkv_parts[1], &v = qkv_parts[2];  // [B·n, C/n, N]
  // h[b, :, i] = Σ_j softmax_j(q_i · k_j / √(C/n)) v_j                  [B·n, C/n, N]
  auto h = dot_product_attention(q, k, v).reshape({B, C, H, W});
  // channels-last activations: h too, so that the projection takes the same convolution path as
  // the rest of the network (on the CPU in bf16, oneDNN's NHWC kernels instead of LibTorch's)
  if (!blocked && x.is_contiguous(channels_last) && !x.is_contiguous()) h = h.contiguous(channels_last);
  return convolve(proj_out, blocked ? to_blocked(h) : h, x);
}

void AttentionBlockImpl::zero_last_layer() { init_zero(proj_out); }

DownsampleImpl::DownsampleImpl(int64_t channels, DownsamplePadding padding) : padding_(padding) {
  // asymmetric: padding 0 here, the pad added in forward
  const int64_t pad = padding_ == DownsamplePadding::symmetric ? 1 : 0;
  conv = register_module("conv",
                         torch::nn::Conv2d(torch::nn::Conv2dOptions(channels, channels, 3).stride(2).padding(pad)));
}

torch::Tensor DownsampleImpl::forward(const torch::Tensor& x) {
  if (padding_ == DownsamplePadding::symmetric) return convolve(conv, x);
  // conv(pad(x, right 1, bottom 1)), stride 2, no further padding; on the NCHW layout, where the
  // kernels' fixed k/2 padding does not apply
  const auto nchw = is_blocked(x) ? from_blocked(x) : x;
  const auto y = conv(F::pad(nchw, F::PadFuncOptions({0, 1, 0, 1})));
  return is_blocked(x) ? to_blocked(y) : y;
}

UpsampleImpl::UpsampleImpl(int64_t channels) { conv = register_module("conv", diffuse::conv(channels, channels, 3)); }

torch::Tensor UpsampleImpl::forward(const torch::Tensor& x, int64_t height, int64_t width) {
  return convolve(conv, upsample_nearest(x, height, width));
}

}  // namespace diffuse
