// The first convolution written straight into channel-blocked activations
// (runtime/blocked_conv_in.h), against LibTorch's conv2d in float64: output and the gradients of
// x, W and b.
#include <gtest/gtest.h>

#include "diffuse/runtime/blocked_conv_in.h"
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

TEST(ConvNchwToBlocked, OutputAndGradientsMatchAFloat64Reference) {
  for_each_channel_block([&](int64_t block) {
    torch::manual_seed(13);
    // mnist's and cifar's conv_in, odd sizes, k 1 and 5, an image narrower than the kernel
    for (const auto& s :
         {ConvCase{16, 1, 32, 28, 28, 3, true}, ConvCase{2, 3, 48, 7, 5, 3, true}, ConvCase{3, 2, 16, 6, 6, 1, false},
          ConvCase{1, 1, 32, 9, 4, 5, true}, ConvCase{1, 3, 16, 2, 1, 3, true}}) {
      SCOPED_TRACE(s.name());
      const auto in = random_conv_inputs(s);
      const auto reference = conv2d_float64(in);

      auto x = in.x.clone().requires_grad_(true), w = in.weight.clone().requires_grad_(true);
      auto b = s.bias ? in.bias.clone().requires_grad_(true) : torch::Tensor();
      auto y5 = conv_nchw_to_blocked(x, w, b);
      ASSERT_EQ(y5.sizes(), (std::vector<int64_t>{s.n, s.o / block, s.h, s.w, block}));
      y5.backward(to_blocked(in.grad_y));
      expect_matches_reference({from_blocked(y5), x.grad(), w.grad(), s.bias ? b.grad() : torch::Tensor()}, reference);
    }
    // without gradients, and without x's gradient (the U-Net's noisy input): the same output and W's
    auto x = torch::randn({2, 1, 5, 5});
    auto w = torch::randn({32, 1, 3, 3});
    {
      torch::NoGradGuard no_grad;
      EXPECT_LT(relative_error(from_blocked(conv_nchw_to_blocked(x, w, {})), torch::conv2d(x, w, {}, 1, 1)), 1e-5);
    }
    auto wg = w.clone().requires_grad_(true);
    auto upstream = torch::randn({2, 32, 5, 5});
    from_blocked(conv_nchw_to_blocked(x, wg, {})).backward(upstream);
    auto w64 = w.to(torch::kFloat64).requires_grad_(true);
    torch::conv2d(x.to(torch::kFloat64), w64, {}, 1, 1).backward(upstream.to(torch::kFloat64));
    EXPECT_LT(relative_error(wg.grad().to(torch::kFloat64), w64.grad()), 1e-5);
  });
}

TEST(ConvNchwToBlocked, BadShapesAreRejectedWithAMessage) {
  auto x = torch::zeros({1, 1, 4, 4});
  EXPECT_THROW(conv_nchw_to_blocked(torch::zeros({1, 1, 4, 4, 16}), torch::zeros({32, 1, 3, 3}), {}), c10::Error);
  EXPECT_THROW(conv_nchw_to_blocked(x, torch::zeros({24, 1, 3, 3}), {}, 16), c10::Error);  // not whole blocks
  EXPECT_THROW(conv_nchw_to_blocked(x, torch::zeros({20, 1, 3, 3}), {}, 8), c10::Error);
  EXPECT_THROW(conv_nchw_to_blocked(x, torch::zeros({32, 1, 3, 3}), {}, 4), c10::Error);  // no such block
  EXPECT_THROW(conv_nchw_to_blocked(x, torch::zeros({32, 3, 3, 3}), {}), c10::Error);  // 1 channel in x
  EXPECT_THROW(conv_nchw_to_blocked(x, torch::zeros({32, 1, 2, 2}), {}), c10::Error);  // even kernel
  EXPECT_THROW(conv_nchw_to_blocked(x, torch::zeros({32, 1, 3, 3}), torch::zeros({2})), c10::Error);
}
