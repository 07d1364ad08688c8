// The last convolution read from channel-blocked activations (runtime/blocked_conv_out.h), against
// LibTorch's conv2d in float64: output and the gradients of x, W and b.
#include <gtest/gtest.h>

#include "diffuse/runtime/blocked_conv_out.h"
#include "diffuse/runtime/blocked_layout.h"
#include "support/networks.h"

using namespace diffuse;

using diffuse::testing::relative_error;

TEST(ConvBlockedToNchw, OutputAndGradientsMatchAFloat64Reference) {
  torch::manual_seed(12);
  struct Case {
    int64_t n, c, o, h, w, k;
    bool bias;
  };
  for (const auto& s : {Case{3, 32, 1, 28, 28, 3, true}, Case{2, 48, 3, 7, 5, 3, true}, Case{2, 16, 2, 6, 6, 1, false},
                        Case{1, 32, 5, 9, 4, 5, true}, Case{1, 16, 1, 2, 1, 3, true}}) {
    SCOPED_TRACE("n " + std::to_string(s.n) + " c " + std::to_string(s.c) + " o " + std::to_string(s.o) + " " +
                 std::to_string(s.h) + "x" + std::to_string(s.w) + " k " + std::to_string(s.k));
    auto x = torch::randn({s.n, s.c, s.h, s.w});
    auto weight = torch::randn({s.o, s.c, s.k, s.k}) * 0.2;
    auto bias = s.bias ? torch::randn({s.o}) : torch::Tensor();
    auto grad_y = torch::randn({s.n, s.o, s.h, s.w});
    // float64 reference
    auto x64 = x.to(torch::kFloat64).requires_grad_(true), w64 = weight.to(torch::kFloat64).requires_grad_(true);
    auto b64 = s.bias ? bias.to(torch::kFloat64).requires_grad_(true) : torch::Tensor();
    auto y64 = torch::conv2d(x64, w64, b64, 1, s.k / 2);
    y64.backward(grad_y.to(torch::kFloat64));
    // the kernel, from the blocked input
    auto x5 = to_blocked(x).requires_grad_(true);
    auto w = weight.clone().requires_grad_(true);
    auto b = s.bias ? bias.clone().requires_grad_(true) : torch::Tensor();
    auto y = conv_blocked_to_nchw(x5, w, b);
    ASSERT_EQ(y.sizes(), y64.sizes());
    y.backward(grad_y);
    EXPECT_LT(relative_error(y.to(torch::kFloat64), y64), 1e-5);
    EXPECT_LT(relative_error(from_blocked(x5.grad()).to(torch::kFloat64), x64.grad()), 1e-5);
    EXPECT_LT(relative_error(w.grad().to(torch::kFloat64), w64.grad()), 1e-5);
    if (s.bias) EXPECT_LT(relative_error(b.grad().to(torch::kFloat64), b64.grad()), 1e-5);
  }
  // without gradients: the same output
  auto x = torch::randn({2, 32, 5, 5});
  auto w = torch::randn({3, 32, 3, 3});
  torch::NoGradGuard no_grad;
  EXPECT_LT(relative_error(conv_blocked_to_nchw(to_blocked(x), w, {}), torch::conv2d(x, w, {}, 1, 1)), 1e-5);
}

TEST(ConvBlockedToNchw, BadShapesAreRejectedWithAMessage) {
  auto x5 = torch::zeros({1, 2, 4, 4, 16});
  EXPECT_THROW(conv_blocked_to_nchw(torch::zeros({1, 32, 4, 4}), torch::zeros({1, 32, 3, 3}), {}), c10::Error);
  EXPECT_THROW(conv_blocked_to_nchw(x5, torch::zeros({1, 16, 3, 3}), {}), c10::Error);  // 32 channels in x
  EXPECT_THROW(conv_blocked_to_nchw(x5, torch::zeros({1, 32, 2, 2}), {}), c10::Error);  // even kernel
  EXPECT_THROW(conv_blocked_to_nchw(x5, torch::zeros({1, 32, 3, 3}), torch::zeros({2})), c10::Error);
}
