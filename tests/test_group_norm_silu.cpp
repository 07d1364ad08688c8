// The channel-blocked layout (its re-orders and 2× upsampling) and the fused GroupNorm+SiLU kernel
// against LibTorch's own operators in float64: outputs and the gradients of x, the shift, γ and β.
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include "diffuse/runtime/blocked_layout.h"
#include "diffuse/runtime/blocked_upsample.h"
#include "diffuse/runtime/group_norm_silu.h"
#include "support/channel_blocks.h"
#include "support/networks.h"

using namespace diffuse;

using diffuse::testing::for_each_channel_block;
using diffuse::testing::relative_error;

TEST(BlockedLayout, PutsTheBlocksChannelsOfAPixelSideBySideAndBack) {
  for_each_channel_block([](int64_t b) {
    auto x = torch::arange(2 * 32 * 3 * 5, torch::kFloat32).reshape({2, 32, 3, 5});
    auto x5 = to_blocked(x);
    ASSERT_EQ(x5.sizes(), (std::vector<int64_t>{2, 32 / b, 3, 5, b}));
    EXPECT_TRUE(x5.is_contiguous());
    // x5[n, c/B, h, w, c%B] = x[n, c, h, w], checked at a few places
    EXPECT_EQ(x5[1][1][2][4][3].item<float>(), x[1][b + 3][2][4].item<float>());
    EXPECT_EQ(x5[0][0][1][0][b - 1].item<float>(), x[0][b - 1][1][0].item<float>());
    EXPECT_TRUE(torch::equal(from_blocked(x5), x));
    EXPECT_THROW(to_blocked(torch::zeros({1, b + 4, 2, 2})), c10::Error);  // not whole blocks
    // images of whole B-pixel tiles and a remainder (7×7, 4×8), against the definition as a
    // permuted copy
    for (auto [h, w] : {std::pair<int64_t, int64_t>{7, 7}, {4, 8}}) {
      auto big = torch::randn({3, 48, h, w});
      auto expected = big.reshape({3, 48 / b, b, h, w}).permute({0, 1, 3, 4, 2}).contiguous();
      EXPECT_TRUE(torch::equal(to_blocked(big), expected));
      EXPECT_TRUE(torch::equal(from_blocked(expected), big));
    }
    // a non-contiguous input, and bf16 (LibTorch's permuted copy) alike
    auto strided = x.transpose(2, 3);
    EXPECT_TRUE(torch::equal(from_blocked(to_blocked(strided)), strided));
    EXPECT_TRUE(torch::equal(to_blocked(x.to(torch::kBFloat16)), x5.to(torch::kBFloat16)));
    // each one's backward pass is the other: ∂(Σ g5 · to_blocked(x))/∂x = from_blocked(g5), and back
    auto g5 = torch::randn_like(x5), g = torch::randn_like(x);
    auto xr = x.clone().requires_grad_(), x5r = x5.clone().requires_grad_();
    (to_blocked(xr) * g5).sum().backward();
    (from_blocked(x5r) * g).sum().backward();
    EXPECT_TRUE(torch::equal(xr.grad(), from_blocked(g5)));
    EXPECT_TRUE(torch::equal(x5r.grad(), to_blocked(g)));
    EXPECT_TRUE(torch::equal(from_blocked(g5).reshape({2, 32 / b, b, 3, 5}).permute({0, 1, 3, 4, 2}), g5));
  });
  // the block asked for, whatever channel_block() is; other blocks refused
  EXPECT_EQ(to_blocked(torch::zeros({1, 16, 2, 2}), 8).size(4), 8);
  EXPECT_EQ(to_blocked(torch::zeros({1, 16, 2, 2}), 16).size(4), 16);
  EXPECT_THROW(to_blocked(torch::zeros({1, 16, 2, 2}), 4), c10::Error);
  EXPECT_THROW(from_blocked(torch::zeros({1, 4, 2, 2, 4})), c10::Error);
}

TEST(BlockedLayout, UpsamplingTwiceMatchesLibTorchsNearestForwardAndBackward) {
  for_each_channel_block([&](int64_t) {
    // y[i, j] = x[⌊i/2⌋, ⌊j/2⌋]; ∂L/∂x sums the four copies' gradients. Odd, non-square sizes.
    torch::manual_seed(6);
    auto x = torch::randn({2, 32, 3, 5}).requires_grad_();
    auto upstream = torch::randn({2, 32, 6, 10});
    auto y = from_blocked(upsample_twice_blocked(to_blocked(x)));
    y.backward(upstream);
    auto x64 = x.detach().to(torch::kFloat64).requires_grad_();
    auto y64 = torch::nn::functional::interpolate(
        x64, torch::nn::functional::InterpolateFuncOptions().size(std::vector<int64_t>{6, 10}).mode(torch::kNearest));
    y64.backward(upstream.to(torch::kFloat64));
    EXPECT_TRUE(torch::equal(y.to(torch::kFloat64), y64));
    EXPECT_LT(relative_error(x.grad().to(torch::kFloat64), x64.grad()), 1e-6);
    EXPECT_THROW(upsample_twice_blocked(torch::zeros({1, 32, 3, 3})), c10::Error);  // NCHW, not blocked
  });
}

namespace {

struct Case {
  int64_t n, c, h, w, groups;
  bool shift;
};

// Relative errors allowed: of y, of ∂L/∂x, of ∂L/∂γ and ∂L/∂β, of ∂L/∂shift.
struct Tolerances {
  double y, x, parameters, shift;
};

// Checks y = SiLU(GroupNorm(x + shift)) and the gradients that y.backward(upstream) left on x,
// shift, γ and β against LibTorch in float64 from the same values (with k.shift; without, the
// shift must have no gradient).
void expect_float64_agreement(const Case& k, const torch::Tensor& y, const torch::Tensor& x, const torch::Tensor& shift,
                              const torch::Tensor& gamma, const torch::Tensor& beta, const torch::Tensor& upstream,
                              const Tolerances& tolerance) {
  auto f64 = [](const torch::Tensor& t) { return t.detach().to(torch::kFloat64).requires_grad_(); };
  auto x64 = f64(x), shift64 = f64(shift), gamma64 = f64(gamma), beta64 = f64(beta);
  auto u64 = k.shift ? x64 + shift64.unsqueeze(-1).unsqueeze(-1) : x64;
  auto y64 = torch::silu(torch::group_norm(u64, k.groups, gamma64, beta64, 1e-5));
  y64.backward(upstream.to(torch::kFloat64));

  EXPECT_LT(relative_error(y.to(torch::kFloat64), y64), tolerance.y);
  EXPECT_LT(relative_error(x.grad().to(torch::kFloat64), x64.grad()), tolerance.x);
  EXPECT_LT(relative_error(gamma.grad().to(torch::kFloat64), gamma64.grad()), tolerance.parameters);
  EXPECT_LT(relative_error(beta.grad().to(torch::kFloat64), beta64.grad()), tolerance.parameters);
  if (k.shift) {
    EXPECT_LT(relative_error(shift.grad().to(torch::kFloat64), shift64.grad()), tolerance.shift);
  } else {
    EXPECT_FALSE(shift.grad().defined());
  }
}

// Two threads at least while it lives: the kernels then take their three-pass schedule for a
// batch of one image and the sample-by-sample one for larger batches (two_passes in
// group_norm_silu.cpp), so that the cases below run both.
class AtLeastTwoThreads {
 public:
  AtLeastTwoThreads() {
    if (before_ < 2) at::set_num_threads(2);
  }
  ~AtLeastTwoThreads() { at::set_num_threads(before_); }

 private:
  int before_ = at::get_num_threads();
};

}  // namespace

TEST(GroupNormSilu, OutputAndGradientsMatchAFloat64Reference) {
  for_each_channel_block([&](int64_t) {
    const AtLeastTwoThreads threads;
    // Groups within a block (32 channels in 8 groups), groups across blocks (16 in 1, 64 in 2),
    // groups that straddle block edges (48 channels in 4 groups of 12), odd image sizes.
    for (const Case& k : {Case{2, 32, 7, 7, 8, true}, Case{3, 16, 5, 3, 1, false}, Case{2, 48, 6, 6, 4, true},
                          Case{1, 64, 14, 14, 2, true}, Case{2, 128, 4, 4, 32, false}}) {
      SCOPED_TRACE("N" + std::to_string(k.n) + " C" + std::to_string(k.c) + " " + std::to_string(k.h) + "x" +
                   std::to_string(k.w) + " groups " + std::to_string(k.groups) + (k.shift ? " shift" : ""));
      torch::manual_seed(3);
      // An offset and a scale per channel, so that the statistics have something to remove.
      auto x = (torch::randn({k.n, k.c, k.h, k.w}) * 2 + torch::randn({1, k.c, 1, 1}) * 3).requires_grad_();
      auto shift = (torch::randn({k.n, k.c}) * 0.5).requires_grad_();
      auto gamma = (1 + 0.3 * torch::randn({k.c})).requires_grad_();
      auto beta = (0.3 * torch::randn({k.c})).requires_grad_();
      auto upstream = torch::randn({k.n, k.c, k.h, k.w});

      auto y = from_blocked(
          group_norm_silu_blocked(to_blocked(x), k.shift ? shift : torch::Tensor(), gamma, beta, k.groups, 1e-5));
      y.backward(upstream);
      expect_float64_agreement(k, y, x, shift, gamma, beta, upstream, Tolerances{1e-6, 1e-5, 1e-5, 1e-5});
    }
  });
}

TEST(GroupNormSilu, WithoutSiluIsGroupNormAloneAgainstAFloat64Reference) {
  for_each_channel_block([&](int64_t) {
    // group_norm_blocked: z = GroupNorm(x), the same kernel with its activation off, forward and
    // the gradients of x, γ and β, for the attention block's shape (64 channels, 8 groups, 7×7)
    // and groups straddling blocks.
    const AtLeastTwoThreads threads;
    for (const Case& k : {Case{16, 64, 7, 7, 8, false}, Case{1, 48, 5, 6, 4, false}}) {
      SCOPED_TRACE("N" + std::to_string(k.n) + " C" + std::to_string(k.c));
      torch::manual_seed(8);
      auto x = (torch::randn({k.n, k.c, k.h, k.w}) * 2 + torch::randn({1, k.c, 1, 1})).requires_grad_();
      auto gamma = (1 + 0.3 * torch::randn({k.c})).requires_grad_(),
           beta = (0.3 * torch::randn({k.c})).requires_grad_();
      auto upstream = torch::randn({k.n, k.c, k.h, k.w});
      auto y = from_blocked(group_norm_blocked(to_blocked(x), gamma, beta, k.groups, 1e-5));
      y.backward(upstream);
      auto f64 = [](const torch::Tensor& t) { return t.detach().to(torch::kFloat64).requires_grad_(); };
      auto x64 = f64(x), gamma64 = f64(gamma), beta64 = f64(beta);
      auto y64 = torch::group_norm(x64, k.groups, gamma64, beta64, 1e-5);
      y64.backward(upstream.to(torch::kFloat64));
      EXPECT_LT(relative_error(y.detach().to(torch::kFloat64), y64), 1e-6);
      EXPECT_LT(relative_error(x.grad().to(torch::kFloat64), x64.grad()), 1e-5);
      EXPECT_LT(relative_error(gamma.grad().to(torch::kFloat64), gamma64.grad()), 1e-5);
      EXPECT_LT(relative_error(beta.grad().to(torch::kFloat64), beta64.grad()), 1e-5);
    }
  });
}

TEST(GroupNormSilu, InputPassedThroughCarriesTheResidualsGradientIntoTheKernel) {
  for_each_channel_block([&](int64_t) {
    // out = SiLU(GroupNorm(x)) + w ⊙ x', x' the passed-through x: ∂L/∂x gets both terms (the
    // second added inside the backward kernel), against float64 LibTorch.
    torch::manual_seed(5);
    auto x = (torch::randn({2, 48, 6, 5}) * 2 + 1).requires_grad_();
    auto gamma = (1 + 0.3 * torch::randn({48})).requires_grad_(), beta = (0.3 * torch::randn({48})).requires_grad_();
    auto w = torch::randn({2, 48, 6, 5}), upstream = torch::randn({2, 48, 6, 5});
    auto [y5, x5_again] = group_norm_silu_blocked_and_input(to_blocked(x), gamma, beta, 4, 1e-5);
    EXPECT_TRUE(torch::equal(from_blocked(x5_again), x));
    (from_blocked(y5) + w * from_blocked(x5_again)).backward(upstream);

    auto f64 = [](const torch::Tensor& t) { return t.detach().to(torch::kFloat64).requires_grad_(); };
    auto x64 = f64(x), gamma64 = f64(gamma), beta64 = f64(beta);
    (torch::silu(torch::group_norm(x64, 4, gamma64, beta64, 1e-5)) + w.to(torch::kFloat64) * x64)
        .backward(upstream.to(torch::kFloat64));
    EXPECT_LT(relative_error(x.grad().to(torch::kFloat64), x64.grad()), 1e-5);
    EXPECT_LT(relative_error(gamma.grad().to(torch::kFloat64), gamma64.grad()), 1e-5);
    EXPECT_LT(relative_error(beta.grad().to(torch::kFloat64), beta64.grad()), 1e-5);

    // without a gradient to record, the second output is x itself
    torch::NoGradGuard no_grad;
    const auto x5 = to_blocked(x.detach());
    auto [y_inference, same] = group_norm_silu_blocked_and_input(x5, gamma, beta, 4, 1e-5);
    EXPECT_TRUE(same.is_same(x5));
    EXPECT_TRUE(torch::allclose(y_inference, y5.detach()));
  });
}

TEST(GroupNormSilu, ConcatenatingKernelMatchesAFloat64ReferenceOfCatThenNorm) {
  for_each_channel_block([&](int64_t) {
    // x = cat(a, b) read by the norm and by a residual term: out = SiLU(GroupNorm(x)) + w ⊙ x'. The
    // kernel writes x itself and hands ∂L/∂a and ∂L/∂b back separately; against float64 LibTorch
    // with torch::cat. Groups that straddle the a|b edge (48 = 32 + 16 channels in 4 groups of 12),
    // a wider b than a, and one image (the kernels' other schedule).
    const AtLeastTwoThreads threads;
    for (const auto [n, ca, cb, groups] : {std::array<int64_t, 4>{2, 32, 16, 4}, std::array<int64_t, 4>{3, 16, 48, 8},
                                           std::array<int64_t, 4>{1, 32, 32, 2}}) {
      SCOPED_TRACE("N" + std::to_string(n) + " a " + std::to_string(ca) + " b " + std::to_string(cb));
      torch::manual_seed(9);
      auto a = (torch::randn({n, ca, 5, 7}) * 2 + 1).requires_grad_();
      auto b = (torch::randn({n, cb, 5, 7}) - 0.5).requires_grad_();
      const int64_t c = ca + cb;
      auto gamma = (1 + 0.3 * torch::randn({c})).requires_grad_(), beta = (0.3 * torch::randn({c})).requires_grad_();
      auto w = torch::randn({n, c, 5, 7}), upstream = torch::randn({n, c, 5, 7});
      auto [y5, x5] = group_norm_silu_blocked_cat_and_input(to_blocked(a), to_blocked(b), gamma, beta, groups, 1e-5);
      EXPECT_TRUE(torch::equal(from_blocked(x5), torch::cat({a, b}, 1)));
      (from_blocked(y5) + w * from_blocked(x5)).backward(upstream);

      auto f64 = [](const torch::Tensor& t) { return t.detach().to(torch::kFloat64).requires_grad_(); };
      auto a64 = f64(a), b64 = f64(b), gamma64 = f64(gamma), beta64 = f64(beta);
      const auto x64 = torch::cat({a64, b64}, 1);
      auto y64 = torch::silu(torch::group_norm(x64, groups, gamma64, beta64, 1e-5));
      EXPECT_LT(relative_error(from_blocked(y5).detach().to(torch::kFloat64), y64), 1e-6);
      (y64 + w.to(torch::kFloat64) * x64).backward(upstream.to(torch::kFloat64));
      EXPECT_LT(relative_error(a.grad().to(torch::kFloat64), a64.grad()), 1e-5);
      EXPECT_LT(relative_error(b.grad().to(torch::kFloat64), b64.grad()), 1e-5);
      EXPECT_LT(relative_error(gamma.grad().to(torch::kFloat64), gamma64.grad()), 1e-5);
      EXPECT_LT(relative_error(beta.grad().to(torch::kFloat64), beta64.grad()), 1e-5);

      // without a gradient to record: the same two outputs
      torch::NoGradGuard no_grad;
      auto [y_inference, x_inference] =
          group_norm_silu_blocked_cat_and_input(to_blocked(a), to_blocked(b), gamma, beta, groups, 1e-5);
      EXPECT_TRUE(torch::equal(x_inference, x5));
      EXPECT_TRUE(torch::equal(y_inference, y5));
    }
    // a and b must agree in images and size
    EXPECT_THROW(group_norm_silu_blocked_cat_and_input(torch::zeros({1, 1, 4, 4, 16}), torch::zeros({1, 1, 4, 5, 16}),
                                                       torch::ones({32}), torch::zeros({32}), 2, 1e-5),
                 c10::Error);
  });
}

TEST(GroupNormSilu, Bf16NchwKernelMatchesAFloat64ReferenceOnTheSameBf16Inputs) {
  // bf16 x and upstream gradient, float32 shift, γ and β; the reference computes in float64 from
  // the same (bf16-rounded) values, so the differences are the kernel's own: its float32
  // arithmetic and the bf16 rounding of y and ∂L/∂x (relative 2⁻⁹ ≈ 2e-3 per element). Images of
  // whole 16-pixel vectors and a remainder (7×7 = 3 · 16 + 1), groups of 4 and of 32 channels.
  const AtLeastTwoThreads threads;
  for (const Case& k : {Case{2, 32, 7, 7, 8, true}, Case{3, 64, 4, 4, 2, false}, Case{2, 24, 5, 3, 6, true},
                        Case{1, 32, 5, 5, 4, true}}) {
    SCOPED_TRACE("N" + std::to_string(k.n) + " C" + std::to_string(k.c) + " " + std::to_string(k.h) + "x" +
                 std::to_string(k.w) + " groups " + std::to_string(k.groups) + (k.shift ? " shift" : ""));
    torch::manual_seed(7);
    auto x = (torch::randn({k.n, k.c, k.h, k.w}) * 2 + torch::randn({1, k.c, 1, 1}) * 3)
                 .to(torch::kBFloat16)
                 .requires_grad_();
    auto shift = (torch::randn({k.n, k.c}) * 0.5).requires_grad_();
    auto gamma = (1 + 0.3 * torch::randn({k.c})).requires_grad_(), beta = (0.3 * torch::randn({k.c})).requires_grad_();
    auto upstream = torch::randn({k.n, k.c, k.h, k.w}).to(torch::kBFloat16);
    ASSERT_TRUE(group_norm_silu_nchw_bf16_applies(x, gamma));
    auto y = group_norm_silu_nchw_bf16(x, k.shift ? shift : torch::Tensor(), gamma, beta, k.groups, 1e-5);
    EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
    y.backward(upstream);
    EXPECT_EQ(x.grad().scalar_type(), torch::kBFloat16);
    expect_float64_agreement(k, y, x, shift, gamma, beta, upstream, Tolerances{4e-3, 4e-3, 1e-4, 1e-3});
  }
  // not for float32, channels-last or a float64 γ: the caller's other paths take those
  EXPECT_FALSE(group_norm_silu_nchw_bf16_applies(torch::zeros({1, 16, 2, 2}), torch::ones({16})));
  EXPECT_FALSE(group_norm_silu_nchw_bf16_applies(
      torch::zeros({1, 16, 2, 2}, torch::kBFloat16).contiguous(c10::MemoryFormat::ChannelsLast), torch::ones({16})));
  EXPECT_FALSE(group_norm_silu_nchw_bf16_applies(torch::zeros({1, 16, 2, 2}, torch::kBFloat16),
                                                 torch::ones({16}, torch::kFloat64)));
}

TEST(GroupNormSilu, Bf16ChannelsLastKernelMatchesAFloat64ReferenceOnTheSameBf16Inputs) {
  // The blocked kernel walking bf16 NHWC memory (a pixel's C channels side by side, 16 at a time):
  // groups within a block, groups straddling blocks (48 channels in 4 groups of 12), a batch of
  // one (the three-pass schedule) and of several (sample by sample). Tolerances as for the NCHW
  // bf16 kernel: y and ∂L/∂x are rounded to bf16.
  const AtLeastTwoThreads threads;
  const auto channels_last = c10::MemoryFormat::ChannelsLast;
  for (const Case& k : {Case{2, 32, 7, 7, 8, true}, Case{3, 64, 4, 4, 2, false}, Case{1, 48, 5, 3, 4, true}}) {
    SCOPED_TRACE("N" + std::to_string(k.n) + " C" + std::to_string(k.c) + " " + std::to_string(k.h) + "x" +
                 std::to_string(k.w) + " groups " + std::to_string(k.groups) + (k.shift ? " shift" : ""));
    torch::manual_seed(8);
    auto x = (torch::randn({k.n, k.c, k.h, k.w}) * 2 + torch::randn({1, k.c, 1, 1}) * 3)
                 .to(torch::kBFloat16)
                 .contiguous(channels_last)
                 .requires_grad_();
    auto shift = (torch::randn({k.n, k.c}) * 0.5).requires_grad_();
    auto gamma = (1 + 0.3 * torch::randn({k.c})).requires_grad_(), beta = (0.3 * torch::randn({k.c})).requires_grad_();
    auto upstream = torch::randn({k.n, k.c, k.h, k.w}).to(torch::kBFloat16);
    ASSERT_TRUE(group_norm_silu_nhwc_bf16_applies(x, gamma));
    auto y = group_norm_silu_nhwc_bf16(x, k.shift ? shift : torch::Tensor(), gamma, beta, k.groups, 1e-5);
    EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
    EXPECT_TRUE(y.is_contiguous(channels_last));
    y.backward(upstream);
    EXPECT_EQ(x.grad().scalar_type(), torch::kBFloat16);
    expect_float64_agreement(k, y, x, shift, gamma, beta, upstream, Tolerances{4e-3, 4e-3, 1e-4, 1e-3});
  }
  // the input passed through: out = y + w ⊙ x' gives x both gradients, as in float64
  torch::manual_seed(9);
  auto x = (torch::randn({2, 32, 5, 4}) * 2 + 1).to(torch::kBFloat16).contiguous(channels_last).requires_grad_();
  auto gamma = (1 + 0.3 * torch::randn({32})).requires_grad_(), beta = (0.3 * torch::randn({32})).requires_grad_();
  auto w = torch::randn({2, 32, 5, 4}).to(torch::kBFloat16), upstream = torch::randn({2, 32, 5, 4});
  auto [y, same_x] = group_norm_silu_nhwc_bf16_and_input(x, gamma, beta, 8, 1e-5);
  (y.to(torch::kFloat32) + w * same_x).backward(upstream);
  auto x64 = x.detach().to(torch::kFloat64).requires_grad_();
  auto y64 = torch::silu(torch::group_norm(x64, 8, gamma.detach().to(torch::kFloat64), beta.detach().to(torch::kFloat64), 1e-5));
  (y64 + w.to(torch::kFloat64) * x64).backward(upstream.to(torch::kFloat64));
  EXPECT_LT(relative_error(x.grad().to(torch::kFloat64), x64.grad()), 4e-3);
  {  // dropout (ddpm-cifar10's ResBlocks): about 1 − p kept, and backward through the same mask
    torch::manual_seed(10);
    auto xd = torch::randn({4, 32, 16, 16}).to(torch::kBFloat16).contiguous(channels_last).requires_grad_();
    auto yd = group_norm_silu_nhwc_bf16(xd, {}, gamma, beta, 8, 1e-5, 0.3);
    const auto kept = (yd != 0).to(torch::kFloat64);
    EXPECT_NEAR(kept.mean().item<double>(), 0.7, 0.01);  // 32,768 draws: 4 standard deviations ≈ 0.01
    const auto up = torch::randn({4, 32, 16, 16}).to(torch::kBFloat16);
    yd.backward(up);
    auto xd64 = xd.detach().to(torch::kFloat64).requires_grad_();
    (torch::silu(torch::group_norm(xd64, 8, gamma.detach().to(torch::kFloat64), beta.detach().to(torch::kFloat64),
                                   1e-5)) *
     kept / 0.7)
        .backward(up.to(torch::kFloat64));
    EXPECT_LT(relative_error(xd.grad().to(torch::kFloat64), xd64.grad()), 4e-3);
  }
  // not for NCHW, float32, or widths that are not whole blocks of 16
  EXPECT_FALSE(group_norm_silu_nhwc_bf16_applies(torch::zeros({1, 16, 2, 2}, torch::kBFloat16), torch::ones({16})));
  EXPECT_FALSE(group_norm_silu_nhwc_bf16_applies(torch::zeros({1, 16, 2, 2}).contiguous(channels_last), torch::ones({16})));
  EXPECT_FALSE(group_norm_silu_nhwc_bf16_applies(
      torch::zeros({1, 24, 2, 2}, torch::kBFloat16).contiguous(channels_last), torch::ones({24})));
}

TEST(GroupNormSilu, SaturatesWithoutOverflowForLargeInputs) {
  for_each_channel_block([&](int64_t) {
    // z far beyond exp's float range on both sides: SiLU(z) → z for z ≫ 0 and → 0 for z ≪ 0.
    auto x = torch::zeros({1, 16, 1, 2});
    x.index_put_({0, torch::indexing::Slice(), 0, 0}, 1.0);
    x.index_put_({0, torch::indexing::Slice(), 0, 1}, -1.0);
    auto gamma = torch::full({16}, 500.0), beta = torch::zeros({16});
    auto y = from_blocked(group_norm_silu_blocked(to_blocked(x), {}, gamma, beta, 1, 1e-5));
    EXPECT_TRUE(torch::isfinite(y).all().item<bool>());
    EXPECT_NEAR(y[0][0][0][0].item<float>(), 500.0, 1e-2);  // x̂ = ±1 (up to ε), so z = ±500
    EXPECT_NEAR(y[0][0][0][1].item<float>(), 0.0, 1e-30);

    // z across exp's whole range (γ = 30: z up to about ±100), element by element against float64:
    // within a few times LibTorch's own float32 error (at this γ, z's float32 rounding dominates both;
    // near z = 0 it cancels, and the two round differently).
    torch::manual_seed(4);
    auto wide = torch::randn({2, 32, 8, 8});
    auto g = torch::full({32}, 30.0), b = torch::randn({32});
    auto want =
        torch::silu(torch::group_norm(wide.to(torch::kFloat64), 4, g.to(torch::kFloat64), b.to(torch::kFloat64)));
    auto worst_error = [&](const torch::Tensor& got) {
      return ((got.to(torch::kFloat64) - want).abs() / (want.abs() + 1e-3)).max().item<double>();
    };
    const double fused = worst_error(from_blocked(group_norm_silu_blocked(to_blocked(wide), {}, g, b, 4, 1e-5)));
    const double libtorch = worst_error(torch::silu(torch::group_norm(wide, 4, g, b)));
    EXPECT_LT(fused, 4 * libtorch + 1e-6) << "LibTorch float32: " << libtorch;
  });
}

TEST(GroupNormSilu, ANaNInAGroupGivesNaNsInThatGroupAndNowhereElse) {
  for_each_channel_block([&](int64_t) {
    // The kernels clamp exp's argument by sign bits, not comparisons; a NaN must still come out a NaN
    // (not 0, not a saturated value) in every element of its group, in both layouts, forward and
    // backward, and leave the other groups finite.
    auto x = torch::randn({2, 32, 3, 3});
    x[0][5][1][2] = std::numeric_limits<float>::quiet_NaN();  // sample 0, group 0 of 2 (channels 0–15)
    const auto gamma = torch::full({32}, 2.0), beta = torch::zeros({32});
    const auto nan_in_group =
        torch::zeros({2, 32, 3, 3}, torch::kBool).index_put_({0, torch::indexing::Slice(0, 16)}, true);
    auto check = [&](const torch::Tensor& got, const char* what) {
      SCOPED_TRACE(what);
      EXPECT_TRUE(torch::equal(got.isnan(), nan_in_group)) << got.isnan().sum().item<int64_t>() << " NaNs";
    };
    auto x5 = to_blocked(x).requires_grad_();
    auto y = from_blocked(group_norm_silu_blocked(x5, {}, gamma, beta, 2, 1e-5));
    check(y, "float32 blocked, forward");
    y.backward(torch::ones_like(y));
    check(from_blocked(x5.grad()), "float32 blocked, backward");
    check(from_blocked(group_norm_blocked(to_blocked(x), gamma, beta, 2, 1e-5)), "the norm alone");
    auto xb = x.to(torch::kBFloat16).contiguous(c10::MemoryFormat::ChannelsLast);
    check(group_norm_silu_nhwc_bf16(xb, {}, gamma, beta, 2, 1e-5).to(torch::kFloat32), "bf16 channels-last");
    check(group_norm_silu_nchw_bf16(x.to(torch::kBFloat16), {}, gamma, beta, 2, 1e-5).to(torch::kFloat32), "bf16 NCHW");
  });
}

TEST(GroupNormSilu, RejectsWrongShapes) {
  auto x5 = torch::zeros({1, 2, 3, 3, 16});
  EXPECT_THROW(group_norm_silu_blocked(x5, {}, torch::ones({32}), torch::zeros({32}), 5, 1e-5), c10::Error);
  EXPECT_THROW(group_norm_silu_blocked(x5, {}, torch::ones({16}), torch::zeros({16}), 8, 1e-5), c10::Error);
  EXPECT_THROW(group_norm_silu_blocked(x5, torch::zeros({2, 32}), torch::ones({32}), torch::zeros({32}), 8, 1e-5),
               c10::Error);
  EXPECT_THROW(group_norm_silu_blocked(torch::zeros({1, 32, 3, 3}), {}, torch::ones({32}), torch::zeros({32}), 8, 1e-5),
               c10::Error);
  EXPECT_THROW(
      group_norm_silu_blocked(torch::zeros({1, 8, 3, 3, 4}), {}, torch::ones({32}), torch::zeros({32}), 8, 1e-5),
      c10::Error);  // blocks of 4: neither 8 nor 16
  EXPECT_THROW(group_norm_silu_blocked_cat_and_input(torch::zeros({1, 2, 4, 4, 8}), torch::zeros({1, 1, 4, 4, 16}),
                                                     torch::ones({32}), torch::zeros({32}), 2, 1e-5),
               c10::Error);  // a and b blocked differently
}

TEST(GroupNormSilu, DropoutKeepsOneMinusPScaledAndBackwardUsesTheSameMask) {
  for_each_channel_block([&](int64_t) {
    torch::manual_seed(7);
    auto x = torch::randn({4, 32, 16, 16});
    auto shift = torch::randn({4, 32}) * 0.3;
    auto gamma = (1 + 0.2 * torch::randn({32})).requires_grad_(), beta = (0.2 * torch::randn({32})).requires_grad_();
    const double p = 0.3;
    auto x5 = to_blocked(x).requires_grad_();
    auto y = from_blocked(group_norm_silu_blocked(x5, shift, gamma, beta, 8, 1e-5, p));
    torch::Tensor plain;
    {
      torch::NoGradGuard no_grad;
      plain = from_blocked(group_norm_silu_blocked(to_blocked(x), shift, gamma, beta, 8, 1e-5));
    }
    // Each element is either dropped (0) or kept and scaled by 1/(1 − p).
    auto kept = y != 0;
    const double keep_rate = kept.to(torch::kFloat64).mean().item<double>();
    EXPECT_NEAR(keep_rate, 1 - p, 0.01);  // 32,768 draws: 4 standard deviations ≈ 0.01
    EXPECT_TRUE(torch::allclose(y.masked_select(kept), plain.masked_select(kept) / (1 - p), 1e-5, 1e-6));
    // The mask is not a pattern of the layout: each channel and each sample keeps about 1 − p.
    auto per_channel = kept.to(torch::kFloat64).mean({0, 2, 3});
    EXPECT_LT((per_channel - (1 - p)).abs().max().item<double>(), 0.06);  // 1,024 draws each: 4 sd ≈ 0.057

    // Backward against float64 autograd through the same mask (taken from the forward output).
    auto upstream = torch::randn_like(y);
    y.backward(upstream);
    auto x64 = x.to(torch::kFloat64).requires_grad_();
    auto g64 = gamma.detach().to(torch::kFloat64).requires_grad_(),
         b64 = beta.detach().to(torch::kFloat64).requires_grad_();
    auto y64 =
        torch::silu(torch::group_norm(x64 + shift.to(torch::kFloat64).unsqueeze(-1).unsqueeze(-1), 8, g64, b64)) *
        kept.to(torch::kFloat64) / (1 - p);
    y64.backward(upstream.to(torch::kFloat64));
    EXPECT_LT(relative_error(from_blocked(x5.grad()).to(torch::kFloat64), x64.grad()), 1e-5);
    EXPECT_LT(relative_error(gamma.grad().to(torch::kFloat64), g64.grad()), 1e-5);
    EXPECT_LT(relative_error(beta.grad().to(torch::kFloat64), b64.grad()), 1e-5);

    // The seed comes from LibTorch's generator: the same seed gives the same mask, the next call another.
    torch::NoGradGuard no_grad;
    torch::manual_seed(11);
    auto first = group_norm_silu_blocked(to_blocked(x), shift, gamma, beta, 8, 1e-5, p) != 0;
    auto second = group_norm_silu_blocked(to_blocked(x), shift, gamma, beta, 8, 1e-5, p) != 0;
    torch::manual_seed(11);
    auto again = group_norm_silu_blocked(to_blocked(x), shift, gamma, beta, 8, 1e-5, p) != 0;
    EXPECT_TRUE(torch::equal(first, again));
    // Two independent masks agree where both keep or both drop: (1 − p)² + p² = 0.58.
    const double agree = (first == second).to(torch::kFloat64).mean().item<double>();
    EXPECT_NEAR(agree, (1 - p) * (1 - p) + p * p, 0.015);
    EXPECT_THROW(group_norm_silu_blocked(to_blocked(x), shift, gamma, beta, 8, 1e-5, 1.0), c10::Error);
  });
}
