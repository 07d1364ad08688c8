// The library's entry points (pipeline/pipeline.h) against the layers they put together: a
// checkpoint loaded once generates what the sampler loop gives with the bare network, the same
// seed gives the same images, guidance and steps are checked, and the NLL goes through the same
// network.
#include <gtest/gtest.h>

#include "diffuse/edit/mix.h"
#include "diffuse/pipeline/pipeline.h"
#include "support/networks.h"
#include "support/temp_dir.h"

using namespace diffuse;
using diffuse::testing::TempDir;

namespace {

// A tiny random class-conditional model written as a checkpoint.
std::string write_tiny_checkpoint(const TempDir& dir, int64_t classes) {
  auto config = unet_config_by_name("tiny", 1, 8);
  config.num_classes = classes;
  torch::manual_seed(1);
  UNet model(config);
  {
    torch::NoGradGuard no_grad;
    for (auto& p : model->parameters()) p.normal_(0.0, 0.05);
  }
  CheckpointInfo info;
  info.model = config;
  info.schedule.timesteps = 100;
  info.data = DataInfo{"tiny", 1, 8, classes};
  const std::string path = dir / "checkpoint.safetensors";
  save_checkpoint(path, model, info);
  return path;
}

}  // namespace

TEST(Pipeline, GenerateIsTheSamplerLoopWithTheBareNetwork) {
  TempDir dir;
  const auto pipe = load_pipeline(write_tiny_checkpoint(dir, 0));
  EXPECT_EQ(pipe.image_shape(), (std::vector<int64_t>{1, 8, 8}));
  GenerateOptions g;
  g.n = 5;
  g.batch_size = 2;
  g.steps = 10;
  g.seed = 7;
  const auto images = generate(pipe, g);
  EXPECT_EQ(images.sizes(), (std::vector<int64_t>{5, 1, 8, 8}));
  EXPECT_TRUE(torch::equal(images, generate(pipe, g)));  // same seed, same images
  // handed over batch by batch (nothing kept): the same images, in order
  std::vector<torch::Tensor> batches;
  int64_t next_first = 0;
  const auto kept = generate(pipe, g, {}, [&](int64_t first, const torch::Tensor& batch) {
    EXPECT_EQ(first, next_first);
    next_first += batch.size(0);
    batches.push_back(batch);
  });
  EXPECT_FALSE(kept.defined());
  EXPECT_EQ(batches.size(), 3u);
  EXPECT_TRUE(torch::equal(torch::cat(batches), images));

  auto sampler = make_sampler(SamplerConfig{"ddim"}, pipe.diffusion.schedule());
  UNet model = pipe.checkpoint.model;
  Denoiser bare = [&](const torch::Tensor& x, const torch::Tensor& t) { return model->forward(x, t); };
  auto gen = at::detail::createCPUGenerator(7);
  const auto expected =
      generate_images(pipe.diffusion, *sampler, bare, 5, 2, {1, 8, 8}, SampleOptions{10, true}, gen).clamp(-1, 1);
  EXPECT_TRUE(torch::allclose(images, expected, 1e-6, 1e-6));
}

TEST(Pipeline, StepsAndGuidanceAreChecked) {
  TempDir dir;
  const auto unconditional = load_pipeline(write_tiny_checkpoint(dir, 0));
  GenerateOptions g;
  EXPECT_EQ(sampling_steps(unconditional, g), 50);
  g.sampler.name = "ddpm";
  EXPECT_EQ(sampling_steps(unconditional, g), 100);  // T
  g.steps = 101;
  EXPECT_THROW(sampling_steps(unconditional, g), std::invalid_argument);
  EXPECT_THROW(make_denoiser(unconditional, 2.0), std::invalid_argument);
}

TEST(Pipeline, GuidedDenoiserCombinesTheTwoPredictions) {
  TempDir dir2;
  const auto pipe = load_pipeline(write_tiny_checkpoint(dir2, 3));
  const auto x = torch::randn({2, 1, 8, 8}), t = torch::tensor({5, 50}, torch::kLong);
  const auto y = torch::tensor({0, 2}, torch::kLong), none = torch::full({2}, 3, torch::kLong);
  UNet model = pipe.checkpoint.model;
  torch::NoGradGuard no_grad;
  const auto conditional = model->forward(x, t, y), unconditional = model->forward(x, t, none);
  // ε̃ = (1 + w) ε(x, y) − w ε(x, ∅)
  const auto guided = make_denoiser(pipe, 1.5)(x, t, y);
  EXPECT_TRUE(torch::allclose(guided, 2.5 * conditional - 1.5 * unconditional, 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(make_denoiser(pipe)(x, t, y), conditional));
  EXPECT_TRUE(torch::allclose(make_unconditional_denoiser(pipe)(x, t), unconditional));
}

TEST(EditMix, MixturesRunFromOneImageToTheOtherUnderOneNoise) {
  EXPECT_EQ(mixture_weights(3), (std::vector<double>{0.0, 0.5, 1.0}));
  EXPECT_EQ(mixture_weights(1), (std::vector<double>{0.5}));
  GaussianDiffusion d(NoiseSchedule(ScheduleConfig{}), Objective::eps, torch::kCPU);
  auto sampler = make_sampler(SamplerConfig{"ddim"}, d.schedule());
  Denoiser net = [](const torch::Tensor& x, const torch::Tensor&) { return 0.1 * x; };
  const auto a = torch::rand({1, 4, 4}) * 2 - 1, b = torch::rand({1, 4, 4}) * 2 - 1;
  auto gen = at::detail::createCPUGenerator(5);
  const auto mixed = denoise_mixtures(d, *sampler, net, a, b, 3, 400, 10, true, gen);
  ASSERT_EQ(mixed.sizes(), (std::vector<int64_t>{3, 1, 4, 4}));
  // the first frame is a alone, noised with the one ε the call draws first
  auto gen2 = at::detail::createCPUGenerator(5);
  const auto eps = torch::randn({1, 1, 4, 4}, gen2);
  const auto alone = noise_and_denoise(d, *sampler, net, a.unsqueeze(0), 400, 10, true, gen2, eps).result;
  EXPECT_TRUE(torch::allclose(mixed[0], alone[0], 1e-6, 1e-6));
}

TEST(Pipeline, ACheckpointWhoseConfigIsOutOfBoundsIsRefusedBeforeAnythingIsBuilt) {
  // A metadata field of 0 GroupNorm groups divided by zero in the U-Net's constructor (SIGFPE);
  // now the config is validated first and the error names the file, the field and the limit.
  TempDir dir;
  auto config = unet_config_by_name("tiny", 1, 8);
  UNet model(config);
  CheckpointInfo info;
  info.model = config;
  info.model.norm_groups = 0;
  info.data = DataInfo{"tiny", 1, 8, 0};
  const std::string path = dir / "bad.safetensors";
  save_checkpoint(path, model, info);
  try {
    load_pipeline(path);
    FAIL() << "loaded a checkpoint with norm_groups = 0";
  } catch (const std::exception& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("bad.safetensors"), std::string::npos) << message;
    EXPECT_NE(message.find("norm_groups = 0"), std::string::npos) << message;
  }
}
