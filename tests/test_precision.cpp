// Precision and memory format: autocast scopes, bf16 and channels-last against float32 NCHW,
// sync-free gradient clipping against LibTorch's, and a bf16 training step.
#include <gtest/gtest.h>

#include "diffuse/model/unet.h"
#include "diffuse/runtime/group_norm_cuda.h"
#include "diffuse/runtime/onednn_conv.h"
#include "diffuse/runtime/precision.h"
#include "diffuse/train/train_step.h"
#include "support/networks.h"

using namespace diffuse;

using diffuse::testing::relative_error;


TEST(Precision, NamesRoundTripAndBadNamesThrow) {
  EXPECT_EQ(precision_from_string(to_string(Precision::bf16)), Precision::bf16);
  EXPECT_EQ(precision_from_string("fp32"), Precision::fp32);
  EXPECT_THROW(precision_from_string("fp16"), std::invalid_argument);
  EXPECT_EQ(memory_format_from_string("channels-last"), MemoryFormat::channels_last);
  EXPECT_THROW(memory_format_from_string("nhwc"), std::invalid_argument);
  // auto: channels-last for inference on a GPU with the own GroupNorm kernel, and for bf16 on a
  // CPU with native bf16 and oneDNN; else NCHW
  const auto fp32 = Precision::fp32, bf16 = Precision::bf16;
  EXPECT_EQ(resolve_memory_format("auto", torch::kCPU, true, fp32).format, MemoryFormat::nchw);
  EXPECT_EQ(resolve_memory_format("auto", torch::kCPU, false, bf16).format,
            onednn_bf16_available() ? MemoryFormat::channels_last : MemoryFormat::nchw);
  EXPECT_EQ(resolve_memory_format("auto", torch::kCUDA, false, bf16).format, MemoryFormat::nchw);
  EXPECT_EQ(resolve_memory_format("auto", torch::kCUDA, true, bf16).format,
            cuda_group_norm_built() ? MemoryFormat::channels_last : MemoryFormat::nchw);
  EXPECT_EQ(resolve_memory_format("channels-last", torch::kCPU, false, fp32).format, MemoryFormat::channels_last);
  EXPECT_THROW(resolve_memory_format("nhwc", torch::kCPU, true, fp32), std::invalid_argument);
  EXPECT_EQ(resolve_precision("fp32", torch::kCPU).precision, Precision::fp32);
  // auto never picks bf16 on a CPU without it in hardware
  if (!cpu_has_native_bf16()) EXPECT_EQ(resolve_precision("auto", torch::kCPU).precision, Precision::fp32);
}

TEST(Precision, AutocastScopeTurnsBf16OnAndRestoresTheState) {
  ASSERT_FALSE(autocast_enabled(torch::kCPU));
  {
    AutocastScope scope(torch::kCPU, Precision::bf16);
    EXPECT_TRUE(autocast_enabled(torch::kCPU));
    auto y = torch::matmul(torch::randn({4, 4}), torch::randn({4, 4}));
    EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
  }
  EXPECT_FALSE(autocast_enabled(torch::kCPU));
  {
    AutocastScope scope(torch::kCPU, Precision::fp32);  // fp32: nothing changes
    EXPECT_FALSE(autocast_enabled(torch::kCPU));
  }
}

TEST(Precision, Bf16AndChannelsLastAgreeWithFloat32) {
  if (const auto why = cpu_bf16_convolution_failure(); !why.empty()) GTEST_SKIP() << "no bf16 convolutions here: " << why;
  auto net = diffuse::testing::random_unet("mnist", 1, 28, 5);
  auto x = torch::randn({4, 1, 28, 28});
  auto t = torch::tensor({1, 250, 600, 999}, torch::kLong);
  torch::NoGradGuard no_grad;
  auto reference = net->forward(x, t);
  torch::Tensor bf16;
  {
    AutocastScope scope(torch::kCPU, Precision::bf16);
    bf16 = net->forward(x, t);
  }
  EXPECT_EQ(bf16.scalar_type(), torch::kFloat32);  // the output keeps the input's dtype
  // bf16 keeps 8 bits of mantissa (relative step 2^-8 ≈ 0.4%); errors add up over ~20 layers
  EXPECT_LT(relative_error(bf16, reference), 0.05);
  EXPECT_GT(relative_error(bf16, reference), 1e-5);  // it really ran in bf16
  net->set_memory_format(MemoryFormat::channels_last);
  auto cl = net->forward(x, t);
  EXPECT_TRUE(cl.is_contiguous());
  EXPECT_LT(relative_error(cl, reference), 1e-5);
  {  // bf16 in channels-last: oneDNN's bf16 convolutions and the NHWC GroupNorm where they apply
    AutocastScope scope(torch::kCPU, Precision::bf16);
    auto cl_bf16 = net->forward(x, t);
    EXPECT_EQ(cl_bf16.scalar_type(), torch::kFloat32);
    EXPECT_LT(relative_error(cl_bf16, reference), 0.05);
    EXPECT_GT(relative_error(cl_bf16, reference), 1e-5);
  }
  // The sampling experiment DIFFUSE_BF16_WEIGHTS: the whole network cast to bf16 once, no
  // autocast. The forward pass casts its float32 input and time embedding to the weights' dtype
  // and hands back float32.
  net->set_memory_format(MemoryFormat::nchw);
  net->to(torch::kBFloat16);
  auto cast = net->forward(x, t);
  EXPECT_EQ(cast.scalar_type(), torch::kFloat32);
  EXPECT_LT(relative_error(cast, reference), 0.05);
  EXPECT_GT(relative_error(cast, reference), 1e-5);
}

TEST(Precision, GradientClippingMatchesLibTorch) {
  torch::manual_seed(1);
  std::vector<torch::Tensor> a{torch::randn({10, 3}), torch::randn({7}), torch::randn({50000})}, b;
  for (auto& p : a) {
    p.mutable_grad() = torch::randn_like(p) * 3;
    auto q = p.detach().clone();
    q.mutable_grad() = p.grad().clone();
    b.push_back(q);
  }
  const double expected_norm = torch::nn::utils::clip_grad_norm_(b, 1.5);
  // the one-pass float64 sum of the training step's CPU path, before clip_grad_norm scales a
  EXPECT_NEAR(flat_grad_norm(a).value(), expected_norm, 1e-5 * expected_norm);
  const double norm = clip_grad_norm(a, 1.5).item<double>();
  EXPECT_NEAR(norm, expected_norm, 1e-4 * expected_norm);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::allclose(a[i].grad(), b[i].grad(), 1e-5, 1e-6));
  // below the limit nothing changes
  auto before = a[0].grad().clone();
  clip_grad_norm(a, 1e6);
  EXPECT_TRUE(torch::equal(a[0].grad(), before));
  a[1].mutable_grad() = a[1].grad().to(torch::kFloat64);  // not all float32: no flat pass
  EXPECT_FALSE(flat_grad_norm(a).has_value());
  // mixed dtypes: each gradient scaled in its own
  for (size_t i = 0; i < a.size(); ++i) b[i].mutable_grad() = a[i].grad().clone();
  const double mixed_norm = torch::nn::utils::clip_grad_norm_(b, 0.5);
  EXPECT_NEAR(clip_grad_norm(a, 0.5).item<double>(), mixed_norm, 1e-4 * mixed_norm);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].grad().scalar_type(), b[i].grad().scalar_type());
    EXPECT_TRUE(torch::allclose(a[i].grad(), b[i].grad(), 1e-5, 1e-6));
  }
}

TEST(Precision, Bf16ChannelsLastGradientsAgreeWithFloat32) {
  if (const auto why = cpu_bf16_convolution_failure(); !why.empty()) GTEST_SKIP() << "no bf16 convolutions here: " << why;
  // The gradients of every parameter of a loss, float32 NCHW against bf16 autocast in
  // channels-last (on a CPU with native bf16: oneDNN's bf16 convolutions, the NHWC GroupNorm
  // kernel and the input passed through it for the residual's gradient).
  auto net = diffuse::testing::random_unet("mnist", 1, 28, 6);
  auto x = torch::randn({3, 1, 28, 28}), target = torch::randn({3, 1, 28, 28});
  auto t = torch::tensor({10, 400, 900}, torch::kLong);
  auto gradients = [&](MemoryFormat format, Precision precision) {
    net->set_memory_format(format);
    net->zero_grad();
    AutocastScope scope(torch::kCPU, precision);
    (net->forward(x, t) - target).square().mean().backward();
    std::vector<torch::Tensor> g;
    for (const auto& p : net->parameters()) g.push_back(p.grad().to(torch::kFloat64).flatten());
    return torch::cat(g);
  };
  const auto reference = gradients(MemoryFormat::nchw, Precision::fp32);
  const auto bf16 = gradients(MemoryFormat::channels_last, Precision::bf16);
  // 1e-3 measured on a CPU with AMX; 0.023 on an AMD EPYC with AVX2 only, whose bf16 oneDNN
  // computes without bf16 instructions; not adding the residual's gradient in the GroupNorm
  // kernel (a mutation) gave 0.14
  EXPECT_LT(relative_error(bf16, reference), cpu_has_native_bf16() ? 0.01 : 0.05);
  EXPECT_GT(relative_error(bf16, reference), 1e-5);  // it really ran in bf16
  for (const auto& p : net->parameters()) EXPECT_EQ(p.grad().scalar_type(), torch::kFloat32);
}

TEST(Precision, Bf16TrainingStepsLowerTheLossLikeFloat32) {
  if (const auto why = cpu_bf16_convolution_failure(); !why.empty()) GTEST_SKIP() << "no bf16 convolutions here: " << why;
  // Fit one fixed batch for a few steps in each precision, from the same start: both losses fall,
  // and end close to each other.
  std::vector<double> final_loss;
  for (auto precision : {Precision::fp32, Precision::bf16}) {
    const auto [first, last] = diffuse::testing::fit_fixed_batch(torch::kCPU, precision);
    EXPECT_LT(last, 0.8 * first) << to_string(precision);
    final_loss.push_back(last);
  }
  EXPECT_NEAR(final_loss[1], final_loss[0], 0.25 * final_loss[0]);
}
