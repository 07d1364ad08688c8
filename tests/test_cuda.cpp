// The CUDA path, against the CPU: skipped where this build or machine has no GPU (CI), run by
// scripts/gpu-check on a machine with one.
#include <gtest/gtest.h>

#include "diffuse/diffusion/gaussian_diffusion.h"
#include "diffuse/model/unet.h"
#include "diffuse/runtime/device.h"
#include "diffuse/sampling/ddim.h"
#include "diffuse/sampling/sample_loop.h"
#include "diffuse/train/train_step.h"

using namespace diffuse;

namespace {

#define SKIP_WITHOUT_CUDA() \
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device in this build or machine"

double relative_error(const torch::Tensor& a, const torch::Tensor& b) {
  return ((a.cpu() - b.cpu()).norm() / b.cpu().norm()).item<double>();
}

UNet random_net(const std::string& name, int64_t channels, int64_t size) {
  torch::manual_seed(7);
  UNet net(unet_config_by_name(name, channels, size));
  torch::NoGradGuard no_grad;
  for (auto& p : net->parameters()) p.normal_(0.0, 0.05);
  net->eval();
  return net;
}

}  // namespace

TEST(Cuda, ForwardMatchesTheCpuInEveryPrecisionAndFormat) {
  SKIP_WITHOUT_CUDA();
  auto net = random_net("mnist", 1, 28);
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
    torch::manual_seed(0);
    auto config = unet_config_by_name("tiny", 1, 12);
    UNet model(config), ema_model(config);
    model->to(torch::kCUDA);
    ema_model->to(torch::kCUDA);
    GaussianDiffusion diffusion(NoiseSchedule(ScheduleConfig{}), Objective::eps, torch::kCUDA);
    AdamW optimizer(model->parameters(), AdamWOptions{});
    Ema ema(0.99);
    TrainStepOptions options;
    options.precision = precision;
    TrainStep step(model, ema_model, diffusion, optimizer, ema, options);
    auto x0 = (torch::rand({16, 1, 12, 12}) * 2 - 1).cuda();
    double first = 0, last = 0;
    for (int i = 0; i < 60; ++i) {
      const double loss = step(x0, torch::Tensor(), 2e-3).item<double>();
      if (i < 5) first += loss / 5;
      if (i >= 55) last += loss / 5;
    }
    EXPECT_LT(last, 0.8 * first) << to_string(precision);
  }
}

TEST(Cuda, GraphReplayOfTheSamplingLoopEqualsTheEagerLoop) {
  SKIP_WITHOUT_CUDA();
  auto net = random_net("tiny", 1, 16);
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
