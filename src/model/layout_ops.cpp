#include "diffuse/model/layout_ops.h"

#include "diffuse/model/unet_blocks.h"
#include "diffuse/runtime/blocked_conv_out.h"
#include "diffuse/runtime/blocked_layout.h"
#include "diffuse/runtime/blocked_upsample.h"
#include "diffuse/runtime/conv_epilogue_cuda.h"
#include "diffuse/runtime/group_norm_cuda.h"
#include "diffuse/runtime/group_norm_silu.h"
#include "diffuse/runtime/onednn_conv.h"
#include "diffuse/runtime/upsample_cuda.h"
#include "diffuse/util/environment.h"

namespace diffuse {

namespace F = torch::nn::functional;

namespace {

// The fused kernel with a norm module's parameters; dropout p (0: none).
torch::Tensor fused_norm_silu(torch::nn::GroupNorm& norm, const torch::Tensor& x5, const torch::Tensor& shift,
                              double dropout) {
  return group_norm_silu_blocked(x5, shift, norm->weight, norm->bias, norm->options.num_groups(), norm->options.eps(),
                                 dropout);
}

}  // namespace

torch::Tensor norm_silu(torch::nn::GroupNorm& norm, const torch::Tensor& x, const torch::Tensor& shift) {
  if (is_blocked(x)) return fused_norm_silu(norm, x, shift, 0.0);
  const int64_t groups = norm->options.num_groups();
  if (group_norm_silu_nhwc_bf16_applies(x, norm->weight)) {  // the CPU's bf16 path in channels-last
    return group_norm_silu_nhwc_bf16(x, shift, norm->weight, norm->bias, groups, norm->options.eps());
  }
  if (group_norm_silu_nchw_bf16_applies(x, norm->weight)) {  // the CPU's bf16 autocast path
    return group_norm_silu_nchw_bf16(x, shift, norm->weight, norm->bias, groups, norm->options.eps());
  }
  if (cuda_group_norm_applies(x, norm->weight, norm->bias, shift, groups)) {
    return group_norm_cuda(x, shift, norm->weight, norm->bias, groups, norm->options.eps(), /*silu=*/true);
  }
  const auto u = shift.defined() ? x + shift.unsqueeze(-1).unsqueeze(-1) : x;  // [B, C] → [B, C, 1, 1]
  return F::silu(group_norm(norm, u));
}

std::pair<torch::Tensor, torch::Tensor> norm_silu_and_input(torch::nn::GroupNorm& norm, const torch::Tensor& x) {
  if (is_blocked(x)) {
    return group_norm_silu_blocked_and_input(x, norm->weight, norm->bias, norm->options.num_groups(),
                                             norm->options.eps());
  }
  if (group_norm_silu_nhwc_bf16_applies(x, norm->weight)) {
    return group_norm_silu_nhwc_bf16_and_input(x, norm->weight, norm->bias, norm->options.num_groups(),
                                               norm->options.eps());
  }
  return {norm_silu(norm, x), x};
}

std::pair<torch::Tensor, torch::Tensor> norm_silu_and_input_of_cat(torch::nn::GroupNorm& norm, const torch::Tensor& a,
                                                                   const torch::Tensor& b) {
  // DIFFUSE_FUSED_CAT=0: torch::cat first (read on every call, so that `bench --alternate` can pair it)
  if (is_blocked(a) && is_blocked(b) && !env_equals("DIFFUSE_FUSED_CAT", "0")) {
    return group_norm_silu_blocked_cat_and_input(a, b, norm->weight, norm->bias, norm->options.num_groups(),
                                                 norm->options.eps());
  }
  return norm_silu_and_input(norm, torch::cat({a, b}, 1));
}

torch::Tensor norm_silu_dropout(torch::nn::GroupNorm& norm, const torch::Tensor& x, const torch::Tensor& shift,
                                torch::nn::Dropout& dropout) {
  const double p = dropout->is_training() ? dropout->options.p() : 0.0;
  if (is_blocked(x)) return fused_norm_silu(norm, x, shift, p);
  if (group_norm_silu_nhwc_bf16_applies(x, norm->weight)) {
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
    if (conv->weight.size(0) % kChannelBlock != 0 && stride == 1) return conv_blocked_to_nchw(x, conv->weight, conv->bias);
    return onednn_conv_blocked(x, conv->weight, conv->bias, stride);
  }
  if (nhwc_bf16_conv_applies(x, conv->weight)) return onednn_conv_nhwc_bf16(x, conv->weight, conv->bias, stride);
  if (conv->weight.size(2) == 3 && stride == 1) return conv3x3(conv, x);
  return conv(x);
}

}  // namespace

torch::Tensor convolve(torch::nn::Conv2d& conv, const torch::Tensor& x, const torch::Tensor& residual) {
  if (cuda_conv_epilogue_applies(x, conv->weight, conv->bias)) {
    return conv2d_bias_residual_cuda(x, conv->weight, conv->bias, conv->options.stride()->at(0), padding_of(conv),
                                     residual);
  }
  auto y = convolve_alone(conv, x);
  if (!residual.defined()) return y;
  // into y, which nothing else holds (the convolutions keep their input, not their output): no
  // new tensor, and y is still warm in the cache (1 % of a mnist training step at batch 16,
  // `bench --alternate`); where the dtypes or shapes differ, LibTorch's promotion and broadcasting
  if (y.scalar_type() == residual.scalar_type() && y.sizes() == residual.sizes()) return y.add_(residual);
  return residual + y;
}

torch::Tensor convolve_without_bias(torch::nn::Conv2d& conv, const torch::Tensor& x) {
  TORCH_CHECK(x.is_cuda(), "convolve_without_bias: for GPU tensors (the CPU's kernels add the bias for free)");
  return torch::conv2d(x, conv->weight, /*bias=*/{}, conv->options.stride()->at(0), padding_of(conv));
}

torch::Tensor upsample_nearest(const torch::Tensor& x, int64_t height, int64_t width) {
  if (is_blocked(x) && height == 2 * x.size(2) && width == 2 * x.size(3)) {
    // Exactly twice the size (index ⌊i/2⌋): LibTorch's 3-D nearest kernel below took 0.75 ms for
    // mnist's 7×7 → 14×14 at batch 16.
    return upsample_twice_blocked(x);
  }
  if (height == 2 * x.size(2) && width == 2 * x.size(3) && cuda_upsample_twice_applies(x)) {
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
