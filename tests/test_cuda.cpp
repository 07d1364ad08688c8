// The CUDA path, against the CPU: skipped where this build or machine has no GPU (CI), run by
// scripts/gpu-check on a machine with one.
#include <gtest/gtest.h>

#include "diffuse/diffusion/gaussian_diffusion.h"
#include "diffuse/model/unet.h"
#include "diffuse/runtime/device.h"
#include "diffuse/runtime/group_norm_cuda.h"
#include "diffuse/sampling/ddim.h"
#include "diffuse/sampling/sample_loop.h"
#include "diffuse/train/train_step.h"
#include "support/networks.h"

using namespace diffuse;
using diffuse::testing::relative_error;

#define SKIP_WITHOUT_CUDA() \
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device in this build or machine"

TEST(Cuda, ForwardMatchesTheCpuInEveryPrecisionAndFormat) {
  SKIP_WITHOUT_CUDA();
  auto net = diffuse::testing::random_unet("mnist", 1, 28, 7);
  auto x = torch::randn({8, 1, 28, 28});
  auto t = torch::randint(0, 1000, {8}, torch::kLong);
  torch::NoGradGuard no_grad;
  auto reference = net->forward(x, t);
  net->to(torch::kCUDA);
  const auto xc = x.cuda(), tc = t.cuda();
  // float32 (cuDNN may use TF32: 10-bit mantissa, hence the tolerance)
  EXPECT_LT(relative_error(net->forward(xc, tc), reference), 5e-3);
  {
    AutocastScope scope(torch::kCUDA, Precision::bf16);
    auto out = net->forward(xc, tc);
    EXPECT_EQ(out.scalar_type(), torch::kFloat32);
    EXPECT_LT(relative_error(out, reference), 0.05);
  }
  net->set_memory_format(MemoryFormat::channels_last);
  EXPECT_LT(relative_error(net->forward(xc, tc), reference), 5e-3);
  // Sampling's fast path: the network cast to bf16, channels-last, so that every GroupNorm takes
  // the own kernel (runtime/group_norm_cuda.h).
  net->to(torch::kBFloat16);
  auto out = net->forward(xc, tc);
  EXPECT_EQ(out.scalar_type(), torch::kFloat32);
  EXPECT_LT(relative_error(out.cpu(), reference), 0.05);
}

TEST(Cuda, TrainingStepsLowerTheLoss) {
  SKIP_WITHOUT_CUDA();
  for (auto precision : {Precision::fp32, Precision::bf16}) {
    const auto [first, last] = diffuse::testing::fit_fixed_batch(torch::kCUDA, precision);
    EXPECT_LT(last, 0.8 * first) << to_string(precision);
  }
}

TEST(Cuda, GraphReplayOfTheSamplingLoopEqualsTheEagerLoop) {
  SKIP_WITHOUT_CUDA();
  auto net = diffuse::testing::random_unet("tiny", 1, 16, 7);
  net->to(torch::kCUDA);
  GaussianDiffusion diffusion(NoiseSchedule(ScheduleConfig{}), Objective::eps, torch::kCUDA);
  DdimSampler sampler(diffusion.schedule(), TimestepSpacing::leading, 0.0);
  torch::NoGradGuard no_grad;
  Denoiser denoiser = [&](const torch::Tensor& x, const torch::Tensor& t) { return net->forward(x, t); };
  auto loop = [&](const torch::Tensor& x_T) -> torch::Tensor {
    return sample_loop(diffusion, sampler, denoiser, x_T, SampleOptions{10, true}, c10::nullopt, StepCallback());
  };
  CudaGraphRunner graph(loop);
  for (int round = 0; round < 2; ++round) {  // the second round replays with new noise
    auto x_T = torch::randn({4, 1, 16, 16}, torch::kCUDA);
    auto eager = loop(x_T);
    auto replayed = graph(x_T);
    EXPECT_LT((eager - replayed).abs().max().item<double>(), 1e-4) << "round " << round;
  }
  EXPECT_GT(peak_memory_bytes(torch::kCUDA), 0);
}

// The hand-written GroupNorm kernel (runtime/group_norm_cuda.h) against float64 on the CPU:
// with and without the shift and the SiLU, float32 and bf16, channel counts of the U-Nets
// (128 to 512, and 384 from concatenated skips), 1 to 1024 pixels, and a mean far from zero.
TEST(Cuda, GroupNormKernelMatchesAFloat64Reference) {
  SKIP_WITHOUT_CUDA();
  if (!cuda_group_norm_built()) GTEST_SKIP() << "built without the own CUDA kernels (no nvcc)";
  torch::NoGradGuard no_grad;
  struct Case {
    int64_t n, c, h, w, groups;
    bool shift, silu;
    torch::ScalarType dtype;
    double offset;
  };
  for (const auto& k : {Case{3, 128, 32, 32, 32, true, true, torch::kFloat32, 0.0},
                        Case{2, 384, 8, 8, 32, true, true, torch::kFloat32, 30.0},
                        Case{2, 512, 4, 4, 32, false, false, torch::kFloat32, 0.0},
                        Case{4, 256, 1, 1, 32, true, true, torch::kFloat32, 0.0},
                        Case{2, 16, 5, 7, 4, false, true, torch::kFloat32, 0.0},
                        Case{3, 256, 16, 16, 32, true, true, torch::kBFloat16, 2.0},
                        Case{2, 128, 32, 32, 32, false, false, torch::kBFloat16, 0.0}}) {
    SCOPED_TRACE("c " + std::to_string(k.c) + ", " + std::to_string(k.h) + "x" + std::to_string(k.w) +
                 (k.shift ? ", shift" : "") + (k.silu ? ", silu" : "") + (k.dtype == torch::kBFloat16 ? ", bf16" : ""));
    auto x = (torch::randn({k.n, k.c, k.h, k.w}) * 0.7 + k.offset).to(k.dtype);
    auto shift = k.shift ? torch::randn({k.n, k.c}) : torch::Tensor();
    auto gamma = 1 + 0.3 * torch::randn({k.c}), beta = 0.3 * torch::randn({k.c});
    // float64 reference on the CPU, from the same (rounded) input
    auto u = x.to(torch::kFloat64);
    if (k.shift) u = u + shift.to(torch::kFloat64).unsqueeze(-1).unsqueeze(-1);
    auto expected = torch::group_norm(u, k.groups, gamma.to(torch::kFloat64), beta.to(torch::kFloat64), 1e-5);
    if (k.silu) expected = torch::silu(expected);
    auto xc = x.cuda().contiguous(c10::MemoryFormat::ChannelsLast);
    auto sc = k.shift ? shift.cuda() : torch::Tensor();
    ASSERT_TRUE(cuda_group_norm_applies(xc, gamma.cuda(), beta.cuda(), sc, k.groups));
    auto y = group_norm_cuda(xc, sc, gamma.cuda(), beta.cuda(), k.groups, 1e-5, k.silu);
    EXPECT_EQ(y.scalar_type(), k.dtype);
    EXPECT_TRUE(y.is_contiguous(c10::MemoryFormat::ChannelsLast));
    const double err = relative_error(y.cpu().to(torch::kFloat64), expected);
    EXPECT_LT(err, k.dtype == torch::kBFloat16 ? 1e-2 : 1e-5);
  }
  // where it does not apply: NCHW, a gradient wanted, channels not a multiple of 8
  auto x = torch::randn({2, 64, 8, 8}, torch::kCUDA);
  auto g = torch::ones({64}, torch::kCUDA), b = torch::zeros({64}, torch::kCUDA);
  EXPECT_FALSE(cuda_group_norm_applies(x, g, b, {}, 8));
  auto xl = x.contiguous(c10::MemoryFormat::ChannelsLast);
  EXPECT_TRUE(cuda_group_norm_applies(xl, g, b, {}, 8));
  {
    torch::AutoGradMode grad(true);
    EXPECT_FALSE(cuda_group_norm_applies(xl, g.clone().requires_grad_(true), b, {}, 8));
  }
  auto odd = torch::randn({2, 12, 8, 8}, torch::kCUDA).contiguous(c10::MemoryFormat::ChannelsLast);
  EXPECT_FALSE(cuda_group_norm_applies(odd, torch::ones({12}, torch::kCUDA), torch::zeros({12}, torch::kCUDA), {}, 4));
  EXPECT_THROW(group_norm_cuda(x, {}, g, b, 8, 1e-5, true), std::invalid_argument);
}
