// The last convolution read from channel-blocked activations (runtime/blocked_conv_out.h), against
// LibTorch's conv2d in float64: output and the gradients of x, W and b.
#include <gtest/gtest.h>

#include "diffuse/runtime/blocked_conv_out.h"
#include "diffuse/runtime/blocked_layout.h"
#include "support/channel_blocks.h"
#include "support/conv_reference.h"

using namespace diffuse;

using diffuse::testing::conv2d_float64;
using diffuse::testing::ConvCase;
using diffuse::testing::expect_matches_reference;
using diffuse::testing::for_each_channel_block;
using diffuse::testing::random_conv_inputs;
using diffuse::testing::relative_error;

TEST(ConvBlockedToNchw, OutputAndGradientsMatchAFloat64Reference) {
  for_each_channel_block([&](int64_t) {
    torch::manual_seed(12);
    for (const auto& s :
         {ConvCase{3, 32, 1, 28, 28, 3, true}, ConvCase{2, 48, 3, 7, 5, 3, true}, ConvCase{2, 16, 2, 6, 6, 1, false},
          ConvCase{1, 32, 5, 9, 4, 5, true}, ConvCase{1, 16, 1, 2, 1, 3, true}}) {
      SCOPED_TRACE(s.name());
      const auto in = random_conv_inputs(s);
      const auto reference = conv2d_float64(in);

      // the kernel, from the blocked input
      auto x5 = to_blocked(in.x).requires_grad_(true);
      auto w = in.weight.clone().requires_grad_(true);
      auto b = s.bias ? in.bias.clone().requires_grad_(true) : torch::Tensor();
      auto y = conv_blocked_to_nchw(x5, w, b);
      ASSERT_EQ(y.sizes(), reference.y.sizes());
      y.backward(in.grad_y);
      expect_matches_reference({y, from_blocked(x5.grad()), w.grad(), s.bias ? b.grad() : torch::Tensor()}, reference);
    }
    // without gradients: the same output
    auto x = torch::randn({2, 32, 5, 5});
    auto w = torch::randn({3, 32, 3, 3});
    torch::NoGradGuard no_grad;
    EXPECT_LT(relative_error(conv_blocked_to_nchw(to_blocked(x), w, {}), torch::conv2d(x, w, {}, 1, 1)), 1e-5);
  });
}

TEST(ConvBlockedToNchw, BadShapesAreRejectedWithAMessage) {
  auto x5 = torch::zeros({1, 2, 4, 4, 16});
  EXPECT_THROW(conv_blocked_to_nchw(torch::zeros({1, 32, 4, 4}), torch::zeros({1, 32, 3, 3}), {}), c10::Error);
  EXPECT_THROW(conv_blocked_to_nchw(x5, torch::zeros({1, 16, 3, 3}), {}), c10::Error);  // 32 channels in x
  EXPECT_THROW(conv_blocked_to_nchw(x5, torch::zeros({1, 32, 2, 2}), {}), c10::Error);  // even kernel
  EXPECT_THROW(conv_blocked_to_nchw(x5, torch::zeros({1, 32, 3, 3}), torch::zeros({2})), c10::Error);
  EXPECT_THROW(conv_blocked_to_nchw(torch::zeros({1, 8, 4, 4, 4}), torch::zeros({1, 32, 3, 3}), {}),
               c10::Error);  // blocks of 4: neither 8 nor 16
}
