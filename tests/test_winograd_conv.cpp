// The own Winograd F(4×4, 3×3) convolution on blocked activations against ATen's convolution in
// float64: the output and all three gradients, on shapes whose tiles overhang the image.
#include <gtest/gtest.h>

#include "diffuse/runtime/blocked_layout.h"
#include "diffuse/runtime/winograd_conv.h"
#include "support/networks.h"

using namespace diffuse;

using diffuse::testing::relative_error;

TEST(WinogradConv, OutputAndGradientsMatchAFloat64Reference) {
  if (!winograd_conv_built()) GTEST_SKIP() << "built without oneDNN (its matmul runs the products)";
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
}

TEST(WinogradConv, RejectsWhatItCannotConvolve) {
  if (!winograd_conv_built()) GTEST_SKIP() << "built without oneDNN";
  const auto x5 = torch::zeros({1, 1, 8, 8, 16});
  EXPECT_THROW(winograd_conv3x3_blocked(x5, torch::zeros({24, 16, 3, 3}), {}), c10::Error);  // O not a multiple of 16
  EXPECT_THROW(winograd_conv3x3_blocked(x5, torch::zeros({16, 32, 3, 3}), {}), c10::Error);  // C mismatch
  EXPECT_THROW(winograd_conv3x3_blocked(x5, torch::zeros({16, 16, 5, 5}), {}), c10::Error);  // not 3×3
}
