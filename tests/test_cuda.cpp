// The CUDA path, against the CPU: skipped where this build or machine has no GPU (CI), run by
// scripts/gpu-check on a machine with one.
#include <gtest/gtest.h>

#include "diffuse/diffusion/gaussian_diffusion.h"
#include "diffuse/model/unet.h"
#include "diffuse/runtime/device.h"
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
