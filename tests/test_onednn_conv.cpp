// oneDNN 3×3 convolutions (Winograd where oneDNN has it) against ATen's convolution in float64:
// outputs and all three gradients, the dispatch rules of conv3x3, and a whole U-Net's loss and
// gradients with either kernels.
#include <gtest/gtest.h>

#include "diffuse/model/unet.h"
#include "diffuse/runtime/blocked_layout.h"
#include "diffuse/runtime/onednn_conv.h"
#include "diffuse/runtime/precision.h"
#include "support/channel_blocks.h"
#include "support/networks.h"

using namespace diffuse;

using diffuse::testing::for_each_channel_block;
using diffuse::testing::relative_error;

namespace {

#define SKIP_WITHOUT_ONEDNN() \
  if (!onednn_conv_built()) GTEST_SKIP() << "built without oneDNN (libdnnl-dev)"

// Sets the process-wide kernels for one scope.
struct KernelsScope {
  ConvKernels previous = conv_kernels();
  explicit KernelsScope(ConvKernels k) { set_conv_kernels(k); }
  ~KernelsScope() { set_conv_kernels(previous); }
};

struct Shape {
  int64_t n, c, o, h, w;
};

// Checks y = conv2d(x, w, b, stride, padding k/2) and the gradients that y.backward(upstream) left
// on x, w and b against LibTorch in float64 from the same values: y and ∂L/∂x within `data`
// (relative), ∂L/∂W and ∂L/∂b within `parameters`. Returns the float64 y.
torch::Tensor expect_float64_agreement(const torch::Tensor& y, const torch::Tensor& x, const torch::Tensor& w,
                                       const torch::Tensor& b, const torch::Tensor& upstream, int64_t stride,
                                       double data, double parameters) {
  auto x64 = x.detach().to(torch::kFloat64).requires_grad_();
  auto w64 = w.detach().to(torch::kFloat64).requires_grad_();
  auto b64 = b.detach().to(torch::kFloat64).requires_grad_();
  auto y64 = torch::conv2d(x64, w64, b64, stride, w.size(2) / 2);
  y64.backward(upstream.to(torch::kFloat64));
  EXPECT_LT(relative_error(y.to(torch::kFloat64), y64), data);
  EXPECT_LT(relative_error(x.grad().to(torch::kFloat64), x64.grad()), data);
  EXPECT_LT(relative_error(w.grad().to(torch::kFloat64), w64.grad()), parameters);
  EXPECT_LT(relative_error(b.grad().to(torch::kFloat64), b64.grad()), parameters);
  return y64.detach();
}

}  // namespace

TEST(OneDnnConv, OutputAndGradientsMatchAFloat64Reference) {
  SKIP_WITHOUT_ONEDNN();
  // The U-Net's kinds of shapes: 1 input channel (conv_in), 1 output (conv_out), odd and
  // non-square sizes (Winograd's 4×4 tiles then overhang), wide layers.
  for (const Shape& s : {Shape{4, 1, 32, 28, 28}, Shape{4, 32, 1, 28, 28}, Shape{3, 16, 24, 7, 7},
                         Shape{2, 64, 64, 14, 10}, Shape{2, 128, 128, 16, 16}}) {
    SCOPED_TRACE("shape N" + std::to_string(s.n) + " C" + std::to_string(s.c) + " O" + std::to_string(s.o) + " " +
                 std::to_string(s.h) + "x" + std::to_string(s.w));
    torch::manual_seed(1);
    auto x = torch::randn({s.n, s.c, s.h, s.w}).requires_grad_();
    auto w = (torch::randn({s.o, s.c, 3, 3}) / std::sqrt(9.0 * s.c)).requires_grad_();
    auto b = torch::randn({s.o}).requires_grad_();
    auto upstream = torch::randn({s.n, s.o, s.h, s.w});

    auto y = onednn_conv3x3(x, w, b);
    y.backward(upstream);
    expect_float64_agreement(y, x, w, b, upstream, 1, 1e-5, 1e-5);
    // Without gradients (sampling) the inference primitive gives the same numbers.
    torch::NoGradGuard no_grad;
    EXPECT_LT(relative_error(onednn_conv3x3(x, w, b), y.detach()), 1e-6);
  }
}

TEST(OneDnnConv, WithoutBiasAndOnlySomeGradients) {
  SKIP_WITHOUT_ONEDNN();
  torch::manual_seed(2);
  auto x = torch::randn({2, 8, 9, 9});  // input needs no gradient (the network's x_t)
  auto w = torch::randn({8, 8, 3, 3}).requires_grad_();
  auto y = onednn_conv3x3(x, w, torch::Tensor());
  y.sum().backward();
  auto w64 = w.detach().to(torch::kFloat64).requires_grad_();
  torch::conv2d(x.to(torch::kFloat64), w64, {}, 1, 1).sum().backward();
  EXPECT_LT(relative_error(y.to(torch::kFloat64), torch::conv2d(x.to(torch::kFloat64), w64.detach(), {}, 1, 1)), 1e-5);
  EXPECT_LT(relative_error(w.grad().to(torch::kFloat64), w64.grad()), 1e-5);
  EXPECT_FALSE(x.grad().defined());
}

TEST(OneDnnConv, BadInputsAreRejectedWithAMessage) {
  SKIP_WITHOUT_ONEDNN();
  auto w = torch::randn({4, 3, 3, 3});
  EXPECT_THROW(onednn_conv3x3(torch::randn({1, 4, 8, 8}), w, {}), c10::Error);  // channels differ
  EXPECT_THROW(onednn_conv3x3(torch::randn({1, 3, 8, 8}, torch::kFloat64), w, {}), c10::Error);
  EXPECT_THROW(onednn_conv3x3(torch::randn({1, 3, 8, 8}), torch::randn({4, 3, 5, 5}), {}), c10::Error);
  EXPECT_THROW(onednn_conv3x3(torch::randn({1, 3, 8, 8}), w, torch::randn({5})), c10::Error);
}

TEST(OneDnnConv, NamesAndResolution) {
  EXPECT_EQ(conv_kernels_from_string(to_string(ConvKernels::onednn)), ConvKernels::onednn);
  EXPECT_THROW(conv_kernels_from_string("winograd"), std::invalid_argument);
  EXPECT_EQ(resolve_conv_kernels("aten", torch::kCPU, true).kernels, ConvKernels::aten);
  EXPECT_EQ(resolve_conv_kernels("auto", torch::kCPU, /*may_run_fp32=*/false).kernels, ConvKernels::aten);
  if (onednn_conv_built()) {
    EXPECT_EQ(resolve_conv_kernels("onednn", torch::kCPU, true).kernels, ConvKernels::onednn);
  } else {
    EXPECT_THROW(resolve_conv_kernels("onednn", torch::kCPU, true), std::invalid_argument);
    EXPECT_THROW(set_conv_kernels(ConvKernels::onednn), std::invalid_argument);
  }
}

TEST(OneDnnConv, Conv3x3TakesATenWhereOneDnnDoesNotApply) {
  SKIP_WITHOUT_ONEDNN();
  KernelsScope scope(ConvKernels::onednn);
  torch::manual_seed(3);
  torch::nn::Conv2d conv(torch::nn::Conv2dOptions(8, 8, 3).padding(1));
  auto x = torch::randn({2, 8, 10, 10});
  torch::NoGradGuard no_grad;
  const auto aten = conv(x);
  // float32 NCHW: oneDNN, same numbers to rounding
  EXPECT_LT(relative_error(conv3x3(conv, x), aten), 1e-5);
  // channels-last input and bf16 autocast go to the module's own forward
  auto y_cl = conv3x3(conv, x.contiguous(c10::MemoryFormat::ChannelsLast));
  EXPECT_LT(relative_error(y_cl, aten), 1e-5);
  if (cpu_has_native_bf16() && cpu_bf16_convolution_failure().empty()) {
    AutocastScope autocast(torch::kCPU, Precision::bf16);
    EXPECT_EQ(conv3x3(conv, x).scalar_type(), torch::kBFloat16);  // autocast's bf16 convolution ran
  }
}

TEST(OneDnnConv, UNetLossAndGradientsAgreeWithATenKernels) {
  SKIP_WITHOUT_ONEDNN();
  auto net = diffuse::testing::random_unet("mnist", 1, 28, 4);
  net->train();
  torch::manual_seed(5);
  auto x = torch::randn({4, 1, 28, 28});
  auto t = torch::randint(0, 1000, {4}, torch::kLong);
  auto loss_and_grads = [&](ConvKernels k) {
    KernelsScope scope(k);
    return diffuse::testing::loss_and_flat_gradients(net, x, t);
  };
  const auto [loss_aten, grads_aten] = loss_and_grads(ConvKernels::aten);
  const auto [loss_onednn, grads_onednn] = loss_and_grads(ConvKernels::onednn);
  EXPECT_NEAR(loss_onednn, loss_aten, 1e-5 * std::abs(loss_aten));
  EXPECT_LT(relative_error(grads_onednn, grads_aten), 1e-4);
}

TEST(OneDnnConv, BlockedConvolutionsOfEveryKindMatchAFloat64Reference) {
  for_each_channel_block([&](int64_t) {
    SKIP_WITHOUT_ONEDNN();
    struct Kind {
      int64_t c, o, k, stride, h, w;
    };
    // 3×3 stride 1 (Winograd or direct, whichever timed faster), 3×3 stride 2 on an odd size
    // (downsampling), 1×1 (shortcuts, attention's projections).
    for (const Kind& k :
         {Kind{32, 48, 3, 1, 9, 7}, Kind{16, 16, 3, 1, 16, 16}, Kind{32, 32, 3, 2, 7, 9}, Kind{48, 32, 1, 1, 5, 6}}) {
      SCOPED_TRACE("C" + std::to_string(k.c) + " O" + std::to_string(k.o) + " k" + std::to_string(k.k) + " stride " +
                   std::to_string(k.stride));
      torch::manual_seed(2);
      auto x = torch::randn({2, k.c, k.h, k.w}).requires_grad_();
      auto w = (torch::randn({k.o, k.c, k.k, k.k}) / std::sqrt(double(k.c * k.k * k.k))).requires_grad_();
      auto b = torch::randn({k.o}).requires_grad_();
      auto y = from_blocked(onednn_conv_blocked(to_blocked(x), w, b, k.stride));
      auto upstream = torch::randn_like(y);
      y.backward(upstream);
      const auto y64 = expect_float64_agreement(y, x, w, b, upstream, k.stride, 1e-5, 1e-5);
      torch::NoGradGuard no_grad;  // the inference plan
      EXPECT_LT(
          relative_error(from_blocked(onednn_conv_blocked(to_blocked(x), w, b, k.stride)).to(torch::kFloat64), y64),
          1e-5);
    }
  });
}

TEST(OneDnnConv, BlocksOnBlockedActivationsAgreeWithTheNchwPath) {
  for_each_channel_block([&](int64_t) {
    SKIP_WITHOUT_ONEDNN();
    // A ResBlock of 32 → 48 channels (a 1×1 shortcut; 8 groups of 4 and of 6 channels), an
    // attention block, an up-path ResBlock whose input is cat(h, x) (48 + 32 → 48 channels: the
    // concatenating norm kernel, 8 groups of 10 channels across the two parts' blocks), a stride-2
    // downsampling and an upsampling, chained, on an odd image size (9×7 → 5×4 → 9×7) and on an
    // even one (8×6 → 4×3 → 8×6: the upsampling's exact-double path).
    torch::manual_seed(6);
    ResBlock res(32, 48, /*time_dim=*/24, /*dropout=*/0.0, /*groups=*/8);
    AttentionBlock attention(48, 8);
    ResBlock res_with_skip(48 + 32, 48, /*time_dim=*/24, /*dropout=*/0.0, /*groups=*/8);
    Downsample down(48);
    Upsample up(48);
    std::vector<torch::nn::Module*> modules{res.get(), attention.get(), res_with_skip.get(), down.get(), up.get()};
    {
      torch::NoGradGuard no_grad;
      for (auto* m : modules) {
        for (auto& p : m->parameters()) p.normal_(0.0, 0.1);
      }
    }
    for (const auto& size : {std::make_pair(9, 7), std::make_pair(8, 6)}) {
      SCOPED_TRACE(std::to_string(size.first) + "x" + std::to_string(size.second));
      auto x = torch::randn({3, 32, size.first, size.second}), emb = torch::randn({3, 24});
      {
        KernelsScope scope(ConvKernels::onednn);
        EXPECT_TRUE(blocked_activations_apply(x, {32, 48}));
        EXPECT_FALSE(blocked_activations_apply(x, {32, 36}));  // 36 channels: not whole blocks
      }
      auto chain = [&](const torch::Tensor& in) {
        auto h = res_with_skip(attention(res(in, emb)), emb, /*skip=*/in);
        return up(down(h), h.size(2), h.size(3));
      };
      // NCHW with ATen's kernels against blocked activations with oneDNN's, with and without gradients.
      auto outputs_and_gradients = [&](bool blocked) {
        KernelsScope scope(blocked ? ConvKernels::onednn : ConvKernels::aten);
        auto run = [&](const torch::Tensor& in) { return blocked ? from_blocked(chain(to_blocked(in))) : chain(in); };
        torch::Tensor sampled;
        {
          torch::NoGradGuard no_grad;  // the sampling path: forward only
          sampled = run(x);
        }
        std::vector<torch::Tensor> grads;
        auto xg = x.clone().requires_grad_();
        auto y = run(xg);
        y.square().sum().backward();
        grads.push_back(xg.grad().flatten());
        for (auto* m : modules) {
          for (auto& p : m->parameters()) {
            grads.push_back(p.grad().flatten().clone());
            p.mutable_grad() = torch::Tensor();
          }
        }
        return std::make_tuple(sampled, y.detach(), torch::cat(grads));
      };
      const auto [sampled_nchw, y_nchw, grads_nchw] = outputs_and_gradients(false);
      const auto [sampled_blocked, y_blocked, grads_blocked] = outputs_and_gradients(true);
      EXPECT_LT(relative_error(sampled_blocked, sampled_nchw), 1e-5);
      EXPECT_LT(relative_error(y_blocked, y_nchw), 1e-5);
      EXPECT_LT(relative_error(grads_blocked, grads_nchw), 1e-4);
    }
  });
}

TEST(OneDnnConv, Bf16ChannelsLastConvolutionsMatchAFloat64ReferenceOnTheSameBf16Values) {
  SKIP_WITHOUT_ONEDNN();
  if (!onednn_bf16_available()) GTEST_SKIP() << "oneDNN runs no bf16 convolutions here (no native bf16, or capped)";
  struct Kind {
    int64_t c, o, k, stride, h, w;
  };
  // 3×3 stride 1, 3×3 stride 2 on an odd size, 1×1, and widths that are no multiples of 16
  for (const Kind& k : {Kind{32, 48, 3, 1, 9, 7}, Kind{32, 32, 3, 2, 7, 9}, Kind{48, 32, 1, 1, 5, 6},
                        Kind{24, 8, 3, 1, 6, 6}}) {
    SCOPED_TRACE("C" + std::to_string(k.c) + " O" + std::to_string(k.o) + " k" + std::to_string(k.k) + " stride " +
                 std::to_string(k.stride));
    torch::manual_seed(4);
    const auto channels_last = torch::MemoryFormat::ChannelsLast;
    auto x = torch::randn({2, k.c, k.h, k.w}).to(torch::kBFloat16).contiguous(channels_last).requires_grad_();
    // float32 master weights whose values bf16 holds exactly: the kernel's conversion then loses
    // nothing, and the reference sees the same numbers
    auto w = (torch::randn({k.o, k.c, k.k, k.k}) / std::sqrt(double(k.c * k.k * k.k)))
                 .to(torch::kBFloat16)
                 .to(torch::kFloat32)
                 .requires_grad_();
    auto b = torch::randn({k.o}).requires_grad_();
    auto y = onednn_conv_nhwc_bf16(x, w, b, k.stride);
    EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
    EXPECT_TRUE(y.is_contiguous(channels_last));
    auto upstream = torch::randn(y.sizes()).to(torch::kBFloat16);
    y.backward(upstream);
    EXPECT_EQ(w.grad().scalar_type(), torch::kFloat32);

    // y and ∂L/∂x are rounded to bf16 (2⁻⁹ relative per element); ∂L/∂W and ∂L/∂b are float32
    // sums of exact products
    const auto y64 = expect_float64_agreement(y, x, w, b, upstream, k.stride, 4e-3, 1e-5);
    torch::NoGradGuard no_grad;  // the inference plan
    EXPECT_LT(relative_error(onednn_conv_nhwc_bf16(x, w, b, k.stride).to(torch::kFloat64), y64), 4e-3);
    // channels-last weights (UNet::set_memory_format) are read as they lie: the same numbers
    const auto w_cl = w.detach().contiguous(channels_last);
    EXPECT_TRUE(torch::equal(onednn_conv_nhwc_bf16(x, w_cl, b, k.stride), onednn_conv_nhwc_bf16(x, w, b, k.stride)));
  }
  // taken under the CPU's bf16 autocast only, and for channels-last activations only
  auto x = torch::randn({2, 32, 6, 6}).contiguous(torch::MemoryFormat::ChannelsLast);
  auto w = torch::randn({16, 32, 3, 3});
  EXPECT_FALSE(nhwc_bf16_conv_applies(x, w));
  const AutocastScope autocast(torch::Device(torch::kCPU), Precision::bf16);
  EXPECT_TRUE(nhwc_bf16_conv_applies(x, w));
  EXPECT_FALSE(nhwc_bf16_conv_applies(x.contiguous(), w));
}
