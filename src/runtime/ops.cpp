#include "diffuse/runtime/ops.h"

#include "diffuse/runtime/attention.h"
#include "diffuse/runtime/blocked_conv_in.h"
#include "diffuse/runtime/blocked_conv_out.h"
#include "diffuse/runtime/blocked_layout.h"
#include "diffuse/runtime/blocked_upsample.h"
#include "diffuse/runtime/conv_epilogue_cuda.h"
#include "diffuse/runtime/group_norm_cuda.h"
#include "diffuse/runtime/group_norm_silu.h"
#include "diffuse/runtime/onednn_conv.h"
#include "diffuse/runtime/settings.h"
#include "diffuse/runtime/upsample_cuda.h"

namespace diffuse {

namespace F = torch::nn::functional;

std::string to_string(KernelPath path) {
  switch (path) {
    case KernelPath::cpu_blocked:
      return "cpu-blocked";
    case KernelPath::cpu_bf16_nhwc:
      return "cpu-bf16-nhwc";
    case KernelPath::cpu_bf16_nchw:
      return "cpu-bf16-nchw";
    case KernelPath::cuda_nhwc_inference:
      return "cuda-nhwc-inference";
    case KernelPath::cuda:
      return "cuda";
    case KernelPath::aten:
      return "aten";
  }
  return "unknown";
}

namespace {

// The path of a pass on `x` laid out as `layout` (not blocked).
KernelPath unblocked_path(const torch::Tensor& x, MemoryFormat layout) {
  if (x.is_cuda()) {
    return layout == MemoryFormat::channels_last && !torch::GradMode::is_enabled() ? KernelPath::cuda_nhwc_inference
                                                                                   : KernelPath::cuda;
  }
  if (x.device().is_cpu() && (autocast_enabled(torch::kCPU) || x.scalar_type() == torch::kBFloat16)) {
    return layout == MemoryFormat::channels_last ? KernelPath::cpu_bf16_nhwc : KernelPath::cpu_bf16_nchw;
  }
  return KernelPath::aten;
}

PassPlan with_settings(PassPlan plan) {
  const auto& settings = runtime_settings();
  plan.fused_cat = settings.fused_cat;
  plan.cuda_bias_in_shift = settings.cuda_bias_in_shift;
  return plan;
}

thread_local const PassPlan* pass_plan = nullptr;

// The plan in force, or one made from the tensor an op was handed (outside any pass).
PassPlan plan_for(const torch::Tensor& x) {
  if (pass_plan) return *pass_plan;
  PassPlan plan;
  plan.layout =
      !is_blocked(x) && x.dim() == 4 && x.is_contiguous(torch::MemoryFormat::ChannelsLast) && !x.is_contiguous()
          ? MemoryFormat::channels_last
          : MemoryFormat::nchw;
  plan.path = is_blocked(x) ? KernelPath::cpu_blocked : unblocked_path(x, plan.layout);
  return with_settings(plan);
}

// The fused kernel with a norm module's parameters; dropout p (0: none).
torch::Tensor fused_norm_silu(torch::nn::GroupNorm& norm, const torch::Tensor& x5, const torch::Tensor& shift,
                              double dropout) {
  return group_norm_silu_blocked(x5, shift, norm->weight, norm->bias, norm->options.num_groups(), norm->options.eps(),
                                 dropout);
}

}  // namespace

PassPlan plan_forward_pass(const torch::Tensor& x, MemoryFormat format, int64_t width_unit) {
  PassPlan plan;
  plan.layout = format;
  plan.path = format == MemoryFormat::nchw && blocked_activations_apply(x.contiguous(), {width_unit})
                  ? KernelPath::cpu_blocked
                  : unblocked_path(x, format);
  return with_settings(plan);
}

ForwardPass::ForwardPass(PassPlan plan) : plan_(plan), outer_(pass_plan) { pass_plan = &plan_; }
ForwardPass::~ForwardPass() { pass_plan = outer_; }
const PassPlan* current_pass_plan() { return pass_plan; }

torch::Tensor convolve_input(torch::nn::Conv2d& conv, const torch::Tensor& x) {
  const auto plan = plan_for(x);
  if (plan.path == KernelPath::cpu_blocked) return conv_nchw_to_blocked(x, conv->weight, conv->bias);
  auto h = conv3x3(conv, plan.layout == MemoryFormat::nchw ? x : x.contiguous(torch_memory_format(plan.layout)));
  // LibTorch's convolution may write a one-channel input's output NCHW even where that input is
  // channels-last (for one channel the two layouts coincide): the format asked for from here on.
  if (plan.layout != MemoryFormat::nchw) h = h.contiguous(torch_memory_format(plan.layout));
  return h;
}

// GroupNorm in its weights' precision: under bf16 autocast the convolutions hand it bf16, which
// CPU autocast (unlike CUDA's) does not cast back, and normalising in float32 is the safe choice.
torch::Tensor group_norm(torch::nn::GroupNorm& norm, const torch::Tensor& x) {
  const int64_t groups = norm->options.num_groups();
  if (is_blocked(x)) return group_norm_blocked(x, norm->weight, norm->bias, groups, norm->options.eps());
  if (plan_for(x).path == KernelPath::cuda_nhwc_inference &&
      cuda_group_norm_applies(x, norm->weight, norm->bias, {}, groups)) {
    return group_norm_cuda(x, {}, norm->weight, norm->bias, groups, norm->options.eps(), /*silu=*/false);
  }
  return norm(x.to(norm->weight.scalar_type()));
}

torch::Tensor norm_silu(torch::nn::GroupNorm& norm, const torch::Tensor& x, const torch::Tensor& shift) {
  if (is_blocked(x)) return fused_norm_silu(norm, x, shift, 0.0);
  const int64_t groups = norm->options.num_groups();
  const double eps = norm->options.eps();
  switch (plan_for(x).path) {
    case KernelPath::cpu_bf16_nhwc:
      if (group_norm_silu_nhwc_bf16_applies(x, norm->weight)) {
        return group_norm_silu_nhwc_bf16(x, shift, norm->weight, norm->bias, groups, eps);
      }
      break;
    case KernelPath::cpu_bf16_nchw:
      if (group_norm_silu_nchw_bf16_applies(x, norm->weight)) {
        return group_norm_silu_nchw_bf16(x, shift, norm->weight, norm->bias, groups, eps);
      }
      break;
    case KernelPath::cuda_nhwc_inference:
      if (cuda_group_norm_applies(x, norm->weight, norm->bias, shift, groups)) {
        return group_norm_cuda(x, shift, norm->weight, norm->bias, groups, eps, /*silu=*/true);
      }
      break;
    default:
      break;
  }
  const auto u = shift.defined() ? x + shift.unsqueeze(-1).unsqueeze(-1) : x;  // [B, C] → [B, C, 1, 1]
  return F::silu(group_norm(norm, u));
}

std::pair<torch::Tensor, torch::Tensor> norm_silu_and_input(torch::nn::GroupNorm& norm, const torch::Tensor& x) {
  if (is_blocked(x)) {
    return group_norm_silu_blocked_and_input(x, norm->weight, norm->bias, norm->options.num_groups(),
                                             norm->options.eps());
  }
  if (plan_for(x).path == KernelPath::cpu_bf16_nhwc && group_norm_silu_nhwc_bf16_applies(x, norm->weight)) {
    return group_norm_silu_nhwc_bf16_and_input(x, norm->weight, norm->bias, norm->options.num_groups(),
                                               norm->options.eps());
  }
  return {norm_silu(norm, x), x};
}

std::pair<torch::Tensor, torch::Tensor> norm_silu_and_input_of_cat(torch::nn::GroupNorm& norm, const torch::Tensor& a,
                                                                   const torch::Tensor& b) {
  // DIFFUSE_FUSED_CAT=0: torch::cat first
  if (is_blocked(a) && is_blocked(b) && plan_for(a).fused_cat) {
    return group_norm_silu_blocked_cat_and_input(a, b, norm->weight, norm->bias, norm->options.num_groups(),
                                                 norm->options.eps());
  }
  return norm_silu_and_input(norm, torch::cat({a, b}, 1));
}

torch::Tensor norm_silu_dropout(torch::nn::GroupNorm& norm, const torch::Tensor& x, const torch::Tensor& shift,
                                torch::nn::Dropout& dropout) {
  const double p = dropout->is_training() ? dropout->options.p() : 0.0;
  if (is_blocked(x)) return fused_norm_silu(norm, x, shift, p);
  if (plan_for(x).path == KernelPath::cpu_bf16_nhwc && group_norm_silu_nhwc_bf16_applies(x, norm->weight)) {
    return group_norm_silu_nhwc_bf16(x, shift, norm->weight, norm->bias, norm->options.num_groups(),
                                     norm->options.eps(), p);
  }
  return dropout(norm_silu(norm, x, shift));
}

namespace {

int64_t padding_of(const torch::nn::Conv2d& conv) { return conv->weight.size(2) / 2; }  // k×k, padding k/2

torch::Tensor convolve_alone(torch::nn::Conv2d& conv, const torch::Tensor& x) {
  const int64_t stride = conv->options.stride()->at(0);
  if (is_blocked(x)) {
    // A few output channels (the last convolution): oneDNN's blocked kernels want whole blocks.
    if (conv->weight.size(0) % x.size(4) != 0 && stride == 1) return conv_blocked_to_nchw(x, conv->weight, conv->bias);
    return onednn_conv_blocked(x, conv->weight, conv->bias, stride);
  }
  if (plan_for(x).path == KernelPath::cpu_bf16_nhwc && nhwc_bf16_conv_applies(x, conv->weight)) {
    return onednn_conv_nhwc_bf16(x, conv->weight, conv->bias, stride);
  }
  if (conv->weight.size(2) == 3 && stride == 1) return conv3x3(conv, x);
  return conv(x);
}

bool on_gpu(KernelPath path) { return path == KernelPath::cuda || path == KernelPath::cuda_nhwc_inference; }

}  // namespace

torch::Tensor convolve(torch::nn::Conv2d& conv, const torch::Tensor& x, const torch::Tensor& residual) {
  if (plan_for(x).path == KernelPath::cuda_nhwc_inference && cuda_conv_epilogue_applies(x, conv->weight, conv->bias)) {
    return conv2d_bias_residual_cuda(x, conv->weight, conv->bias, conv->options.stride()->at(0), padding_of(conv),
                                     residual);
  }
  auto y = convolve_alone(conv, x);
  if (!residual.defined()) return y;
  // into y, which nothing else holds (the convolutions keep their input, not their output): no
  // new tensor, and y is still warm in the cache; where the dtypes or shapes differ, LibTorch's
  // promotion and broadcasting
  if (y.scalar_type() == residual.scalar_type() && y.sizes() == residual.sizes()) return y.add_(residual);
  return residual + y;
}

std::pair<torch::Tensor, torch::Tensor> convolve_with_shift(torch::nn::Conv2d& conv, const torch::Tensor& x,
                                                            const torch::Tensor& shift) {
  // On the CPU the kernels add the bias for free.
  const auto plan = plan_for(x);
  if (!on_gpu(plan.path) || !x.is_cuda() || !plan.cuda_bias_in_shift) return {convolve(conv, x), shift};
  // y = W * x, shift' = shift + b
  return {torch::conv2d(x, conv->weight, /*bias=*/{}, conv->options.stride()->at(0), padding_of(conv)),
          shift + conv->bias};
}

torch::Tensor convolve_padded(torch::nn::Conv2d& conv, const torch::Tensor& x, const std::vector<int64_t>& pad) {
  // On the NCHW layout, where the kernels' fixed k/2 padding does not apply.
  const auto nchw = is_blocked(x) ? from_blocked(x) : x;
  const auto y = conv(F::pad(nchw, F::PadFuncOptions(pad)));
  return is_blocked(x) ? to_blocked(y) : y;
}

torch::Tensor self_attention(const torch::Tensor& qkv_in, int64_t heads, const torch::Tensor& like) {
  const bool blocked = is_blocked(qkv_in);
  // Blocked activations: the norm and the 1×1 convolutions ran on the blocked layout (oneDNN's
  // convolutions), the products run on NCHW, which they want as [B, C, N].
  const auto qkv = blocked ? from_blocked(qkv_in) : qkv_in;
  const auto B = qkv.size(0), C = qkv.size(1) / 3, H = qkv.size(2), W = qkv.size(3);
  const auto channels_last = torch::MemoryFormat::ChannelsLast;
  if (heads == 1 && on_gpu(plan_for(qkv_in).path) && qkv.is_cuda() && qkv.is_contiguous(channels_last) &&
      !qkv.is_contiguous()) {
    // Channels-last on a GPU: qkv is [B, N, 3C] in memory, so q, k and v are strided views of it,
    // and the product's [B, N, C] is h in channels-last: no re-ordering copies.
    const auto tokens = qkv.permute({0, 2, 3, 1}).reshape({B, H * W, 3 * C});  // a view
    const auto out = dot_product_attention_tokens(tokens.narrow(2, 0, C), tokens.narrow(2, C, C),
                                                  tokens.narrow(2, 2 * C, C));  // [B, N, C]
    return out.reshape({B, H, W, C}).permute({0, 3, 1, 2});
  }
  // Heads as a batch dimension: [B, 3, C, N] → q, k, v of [B·n, C/n, N], head h of image b at b·n + h.
  // unbind, not three selects: its backward stacks the three gradients in one copy, where each
  // select's backward zero-filled a tensor of all three and the three were then added
  const auto qkv_heads = heads == 1 ? qkv.reshape({B, 3, C, H * W})
                                    : qkv.reshape({B, 3, heads, C / heads, H * W})
                                          .transpose(1, 2)
                                          .reshape({B * heads, 3, C / heads, H * W});
  const auto parts = qkv_heads.unbind(1);
  auto h = dot_product_attention(parts[0], parts[1], parts[2]).reshape({B, C, H, W});
  if (blocked) return to_blocked(h);
  // channels-last activations: h too, so that the projection takes the same convolution path as
  // the rest of the network (on the CPU in bf16, oneDNN's NHWC kernels instead of LibTorch's)
  if (like.is_contiguous(channels_last) && !like.is_contiguous()) h = h.contiguous(channels_last);
  return h;
}

torch::Tensor cross_attention(const torch::Tensor& q_in, const torch::Tensor& k, const torch::Tensor& v,
                              const torch::Tensor& key_mask, int64_t heads, const torch::Tensor& like) {
  const bool blocked = is_blocked(q_in);
  const auto q = blocked ? from_blocked(q_in) : q_in;
  const auto B = q.size(0), C = q.size(1), H = q.size(2), W = q.size(3);
  const auto queries = q.flatten(2).transpose(1, 2);  // [B, H·W, C]
  auto h = masked_attention(queries, k.to(q.scalar_type()), v.to(q.scalar_type()), key_mask, heads)
               .transpose(1, 2)
               .reshape({B, C, H, W});
  if (blocked) return to_blocked(h);
  const auto channels_last = torch::MemoryFormat::ChannelsLast;
  if (like.is_contiguous(channels_last) && !like.is_contiguous()) h = h.contiguous(channels_last);
  return h;
}

torch::Tensor token_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                              const torch::Tensor& key_mask, int64_t heads) {
  return masked_attention(q, k, v, key_mask, heads);
}

torch::Tensor upsample_nearest(const torch::Tensor& x, int64_t height, int64_t width) {
  if (is_blocked(x) && height == 2 * x.size(2) && width == 2 * x.size(3)) {
    // Exactly twice the size (index ⌊i/2⌋): a copy kernel instead of LibTorch's general 3-D
    // nearest-neighbour resize below.
    return upsample_twice_blocked(x);
  }
  if (height == 2 * x.size(2) && width == 2 * x.size(3) && plan_for(x).path == KernelPath::cuda_nhwc_inference &&
      cuda_upsample_twice_applies(x)) {
    return upsample_twice_cuda(x);  // channels-last on a GPU, in x's dtype (autocast would run it in float32)
  }
  if (is_blocked(x)) {
    // [B, C/16, H, W, 16] read as a volume [B, C/16 channels, depth H, height W, width 16]:
    // nearest-neighbour resizing to (height, width, 16) repeats rows and columns and leaves the
    // 16 lanes as they are.
    return F::interpolate(x, F::InterpolateFuncOptions()
                                 .size(std::vector<int64_t>{height, width, x.size(4)})
                                 .mode(torch::kNearest));
  }
  return F::interpolate(x, F::InterpolateFuncOptions().size(std::vector<int64_t>{height, width}).mode(torch::kNearest));
}

}  // namespace diffuse
