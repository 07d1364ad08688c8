// The own Winograd F(4×4, 3×3) convolution on blocked activations against ATen's convolution in
// float64: the output and all three gradients, on shapes whose tiles overhang the image.
#include <gtest/gtest.h>

#include "diffuse/runtime/blocked_layout.h"
#include "diffuse/runtime/onednn_conv.h"
#include "diffuse/runtime/winograd_conv.h"
#include "diffuse/util/environment.h"
#include "support/channel_blocks.h"
#include "support/networks.h"

using namespace diffuse;

using diffuse::testing::for_each_channel_block;
using diffuse::testing::relative_error;

TEST(WinogradConv, OutputAndGradientsMatchAFloat64Reference) {
  for_each_channel_block([&](int64_t) {
    struct Shape {
      int64_t n, c, o, h, w;
    };
    // 4×4 tiles that fit (28, 16), that overhang by 1 to 3 pixels (7, 14, 9×13), wide layers
    for (const Shape& s : {Shape{2, 16, 16, 28, 28}, Shape{3, 32, 48, 7, 7}, Shape{2, 64, 32, 14, 14},
                           Shape{1, 16, 32, 9, 13}, Shape{2, 128, 128, 16, 16}}) {
      SCOPED_TRACE("shape N" + std::to_string(s.n) + " C" + std::to_string(s.c) + " O" + std::to_string(s.o) + " " +
                   std::to_string(s.h) + "x" + std::to_string(s.w));
      torch::manual_seed(3);
      const auto x = torch::randn({s.n, s.c, s.h, s.w});
      const auto w = torch::randn({s.o, s.c, 3, 3}) * (1.0 / std::sqrt(9.0 * s.c));
      const auto b = torch::randn({s.o});
      const auto upstream = torch::randn({s.n, s.o, s.h, s.w});

      auto x64 = x.to(torch::kFloat64).requires_grad_();
      auto w64 = w.to(torch::kFloat64).requires_grad_();
      auto b64 = b.to(torch::kFloat64).requires_grad_();
      auto y64 = torch::conv2d(x64, w64, b64, 1, 1);
      y64.backward(upstream.to(torch::kFloat64));

      const auto x5 = to_blocked(x), g5 = to_blocked(upstream);
      const auto y = from_blocked(winograd_conv3x3_blocked(x5, w, b));
      const auto dx = from_blocked(winograd_conv3x3_blocked_backward_data(g5, w));
      const auto [dw, db] = winograd_conv3x3_blocked_backward_weights(x5, g5);
      // F(4×4, 3×3) in float32: about 1e-6 relative here (direct float32 convolutions: 1e-7)
      EXPECT_LT(relative_error(y.to(torch::kFloat64), y64), 1e-5);
      EXPECT_LT(relative_error(dx.to(torch::kFloat64), x64.grad()), 1e-5);
      EXPECT_LT(relative_error(dw.to(torch::kFloat64), w64.grad()), 1e-5);
      EXPECT_LT(relative_error(db.to(torch::kFloat64), b64.grad()), 1e-6);
    }
  });
}

TEST(WinogradConv, RejectsWhatItCannotConvolve) {
  const auto x5 = torch::zeros({1, 1, 8, 8, 16});
  EXPECT_THROW(winograd_conv3x3_blocked(x5, torch::zeros({24, 16, 3, 3}), {}), c10::Error);  // O not a multiple of 16
  EXPECT_THROW(winograd_conv3x3_blocked(x5, torch::zeros({16, 32, 3, 3}), {}), c10::Error);  // C mismatch
  EXPECT_THROW(winograd_conv3x3_blocked(x5, torch::zeros({16, 16, 5, 5}), {}), c10::Error);  // not 3×3
  EXPECT_THROW(winograd_conv3x3_blocked(torch::zeros({1, 2, 8, 8, 8}), torch::zeros({12, 16, 3, 3}), {}),
               c10::Error);  // O not a multiple of 8
  EXPECT_THROW(winograd_conv3x3_blocked(torch::zeros({1, 4, 8, 8, 4}), torch::zeros({16, 16, 3, 3}), {}),
               c10::Error);  // blocks of 4
  EXPECT_THROW(winograd_conv3x3_blocked_backward_weights(torch::zeros({1, 2, 8, 8, 8}), torch::zeros({1, 1, 8, 8, 16})),
               c10::Error);  // x and ∂L/∂y blocked differently
}

// The blocked path's autograd function sends its Winograd passes to the own kernels where oneDNN
// has none, or under DIFFUSE_OWN_WINOGRAD=1: forced here (with every pass Winograd), the output and
// the three gradients through onednn_conv_blocked still match float64, on a shape whose tiles
// overhang and with a second layer, so that both backward passes run.
TEST(WinogradConv, TheBlockedPathsWinogradPassesRunItWhereAsked) {
  if (!onednn_conv_built()) GTEST_SKIP() << "built without oneDNN";
  const EnvironmentSwitch own("DIFFUSE_OWN_WINOGRAD", "1", /*on=*/true),
      winograd("DIFFUSE_CONV_ALGORITHM", "winograd", /*on=*/true);
  torch::manual_seed(4);
  const auto x = torch::randn({2, 32, 10, 14});
  const auto w1 = (torch::randn({16, 32, 3, 3}) * 0.1).requires_grad_(), b1 = torch::randn({16}).requires_grad_();
  const auto w2 = (torch::randn({32, 16, 3, 3}) * 0.1).requires_grad_(), b2 = torch::randn({32}).requires_grad_();
  const auto upstream = torch::randn({2, 32, 10, 14});
  const auto x5 = to_blocked(x).requires_grad_();
  const auto y = from_blocked(onednn_conv_blocked(onednn_conv_blocked(x5, w1, b1, 1), w2, b2, 1));
  y.backward(upstream);

  auto x64 = x.to(torch::kFloat64).requires_grad_();
  std::vector<torch::Tensor> p64;
  for (const auto& p : {w1, b1, w2, b2}) p64.push_back(p.detach().to(torch::kFloat64).requires_grad_());
  const auto y64 = torch::conv2d(torch::conv2d(x64, p64[0], p64[1], 1, 1), p64[2], p64[3], 1, 1);
  y64.backward(upstream.to(torch::kFloat64));
  EXPECT_LT(relative_error(y.to(torch::kFloat64), y64), 1e-5);
  EXPECT_LT(relative_error(from_blocked(x5.grad()).to(torch::kFloat64), x64.grad()), 1e-5);
  int i = 0;
  for (const auto& p : {w1, b1, w2, b2}) {
    EXPECT_LT(relative_error(p.grad().to(torch::kFloat64), p64[i].grad()), 1e-5) << "parameter " << i;
    ++i;
  }
}
