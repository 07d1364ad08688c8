// Image conditions: the inpainting condition's layout, super-resolution's block means against a
// float64 loop and its bicubic upsampling, the training masks (binary, with holes and known
// pixels, reproducible), the PSNR of a region, guidance on condition channels, the checkpoint's
// record of the condition, and models trained a few steps whose loss falls and that sample under a
// condition.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "diffuse/checkpoint/checkpoint.h"
#include "diffuse/diffusion/image_condition.h"
#include "diffuse/edit/noise_and_denoise.h"
#include "diffuse/io/image.h"
#include "diffuse/io/safetensors.h"
#include "diffuse/model/unet.h"
#include "diffuse/pipeline/pipeline.h"
#include "diffuse/sampling/guidance.h"
#include "diffuse/train/trainer.h"
#include "support/error_of.h"
#include "support/small_training.h"
#include "support/temp_dir.h"

using namespace diffuse;
using diffuse::testing::error_of;
using diffuse::testing::logged_losses;
using diffuse::testing::small_training;
using diffuse::testing::TempDir;

TEST(ImageCondition, InpaintingHoldsTheKnownPixelsAndTheMask) {
  const auto x0 = torch::rand({2, 3, 8, 8}) * 2 - 1;
  auto known = torch::ones({2, 1, 8, 8});
  known[0].narrow(1, 2, 4).zero_();  // rows 2..5 of the first image are the hole
  const auto c = inpaint_condition(x0, known);
  ASSERT_EQ(c.sizes(), torch::IntArrayRef({2, 4, 8, 8}));
  EXPECT_TRUE(torch::equal(c.narrow(1, 3, 1), known));
  EXPECT_TRUE(torch::equal(c.narrow(1, 0, 3)[1], x0[1]));  // all known
  EXPECT_EQ(c[0].narrow(0, 0, 3).narrow(1, 2, 4).abs().sum().item<double>(), 0.0);
  EXPECT_TRUE(torch::equal(c[0].narrow(0, 0, 3).narrow(1, 0, 2), x0[0].narrow(1, 0, 2)));
  // one mask for every image
  EXPECT_TRUE(torch::equal(inpaint_condition(x0, known.narrow(0, 0, 1)).narrow(1, 3, 1)[1], known[0]));
  EXPECT_THROW(inpaint_condition(x0, torch::ones({2, 2, 8, 8})), c10::Error);
  EXPECT_EQ(condition_channels({ImageConditionKind::inpaint, 4}, 3), 4);
  EXPECT_EQ(condition_channels({ImageConditionKind::super_resolution, 4}, 3), 3);
}

TEST(ImageCondition, SuperResolutionAveragesBlocksAndUpsamplesBicubically) {
  const auto x0 = torch::rand({2, 1, 12, 12}, torch::kDouble) * 2 - 1;
  const auto low = downsample_mean(x0.to(torch::kFloat32), 4);
  ASSERT_EQ(low.sizes(), torch::IntArrayRef({2, 1, 3, 3}));
  auto a = x0.accessor<double, 4>();
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t i = 0; i < 3; ++i)
      for (int64_t j = 0; j < 3; ++j) {
        double sum = 0;
        for (int64_t y = 0; y < 4; ++y)
          for (int64_t x = 0; x < 4; ++x) sum += a[b][0][4 * i + y][4 * j + x];
        EXPECT_NEAR(low[b][0][i][j].item<double>(), sum / 16, 1e-6);
      }
  // a constant image stays constant; the condition has the image's shape and range
  EXPECT_TRUE(
      torch::allclose(upsample_bicubic(torch::full({1, 1, 3, 3}, 0.25), 12), torch::full({1, 1, 12, 12}, 0.25)));
  const auto c = super_resolution_condition(x0.to(torch::kFloat32), 4);
  EXPECT_EQ(c.sizes(), x0.sizes());
  EXPECT_LE(c.abs().max().item<double>(), 1.0);
  // the block means of the condition are near those of the image (bicubic keeps the low frequencies)
  EXPECT_LT((downsample_mean(c, 4) - low).abs().mean().item<double>(), 0.2);
  check_image_condition({ImageConditionKind::super_resolution, 4}, 28);
  EXPECT_NE(error_of([] {
              check_image_condition({ImageConditionKind::super_resolution, 3}, 28);
            }).find("factor 3 must be at least 2 and divide the image size 28"),
            std::string::npos);
  EXPECT_THROW(check_image_condition({ImageConditionKind::super_resolution, 1}, 28), std::invalid_argument);
}

TEST(ImageCondition, TrainingMasksAreBinaryHaveHolesAndRepeatWithTheirSeed) {
  auto gen = [](uint64_t seed) { return at::detail::createCPUGenerator(seed); };
  const auto masks = random_known_masks(400, 28, gen(1));
  ASSERT_EQ(masks.sizes(), torch::IntArrayRef({400, 1, 28, 28}));
  EXPECT_TRUE(((masks == 0) | (masks == 1)).all().item<bool>());
  const auto known_fraction = masks.flatten(1).mean(1);
  // every mask hides something and keeps something
  EXPECT_GT(known_fraction.min().item<double>(), 0.0);
  EXPECT_LT(known_fraction.max().item<double>(), 1.0);
  // half planes keep exactly half: a quarter of the masks, within 5σ of 100
  const double halves = (known_fraction == 0.5).sum().item<double>();
  EXPECT_NEAR(halves, 100.0, 5 * std::sqrt(400 * 0.25 * 0.75) + 10);  // (a rectangle may keep half too)
  EXPECT_TRUE(torch::equal(random_known_masks(16, 28, gen(7)), random_known_masks(16, 28, gen(7))));
  EXPECT_FALSE(torch::equal(random_known_masks(16, 28, gen(7)), random_known_masks(16, 28, gen(8))));
}

TEST(ImageCondition, PsnrOfARegionCountsOnlyItsPixels) {
  const auto a = torch::zeros({1, 2, 4, 4});
  auto b = torch::zeros({1, 2, 4, 4});
  b[0][0][0][0] = 1.0;  // one pixel off by 1 inside the region, others outside it off by 2
  b[0].narrow(1, 2, 2).fill_(2.0);
  auto region = torch::zeros({1, 1, 4, 4});
  region[0][0].narrow(0, 0, 2).fill_(1.0);  // rows 0..1: 8 pixels × 2 channels
  const double mse = 1.0 / 16;
  EXPECT_NEAR(psnr(a, b, region).item<double>(), 10 * std::log10(4.0 / mse), 1e-9);
  EXPECT_NEAR(psnr(a, b, torch::ones({1, 1, 4, 4})).item<double>(), psnr(a, b).item<double>(), 1e-9);
}

TEST(ImageCondition, GuidanceMixesTheConditionedAndTheEmptyConditionsOutputs) {
  // a "network" that returns the mean of its condition channels per image
  ConditionalDenoiser net = [](const torch::Tensor& x, const torch::Tensor&, const torch::Tensor& y) {
    return torch::ones_like(x) * y.mean({1, 2, 3}).view({-1, 1, 1, 1});
  };
  const auto x = torch::zeros({2, 1, 4, 4}), t = torch::zeros({2}, torch::kLong);
  const auto y = torch::full({2, 2, 4, 4}, 0.5);
  const double w = 3.0;
  const auto guided = classifier_free_guidance(net, torch::zeros({2, 4, 4}), w)(x, t, y);
  EXPECT_TRUE(torch::allclose(guided, torch::full({2, 1, 4, 4}, (1 + w) * 0.5 - w * 0.0)));
}

TEST(ImageCondition, TheCheckpointRecordsItAndRefusesOneThatDoesNotFit) {
  CheckpointInfo info;
  info.model = unet_config_by_name("tiny", 1, 16);
  info.data = DataInfo{"mnist", 1, 16, 10};
  info.image_condition = ImageCondition{ImageConditionKind::super_resolution, 4};
  info.model.extra_in_channels = 1;
  const auto back = checkpoint_info_from_metadata(checkpoint_metadata(info), "test");
  ASSERT_TRUE(back.image_condition.has_value());
  EXPECT_EQ(back.image_condition->kind, ImageConditionKind::super_resolution);
  EXPECT_EQ(back.image_condition->factor, 4);
  auto metadata = checkpoint_metadata(info);
  metadata["image_condition"] = R"({"kind":"inpaint"})";  // 2 channels, the model takes 1
  EXPECT_NE(error_of([&] {
              checkpoint_info_from_metadata(metadata, "c.safetensors");
            }).find("the inpaint condition has 2 channels, the model takes 1"),
            std::string::npos);
  metadata["image_condition"] = R"({"kind":"super-resolution","factor":5})";
  EXPECT_NE(error_of([&] { checkpoint_info_from_metadata(metadata, "c.safetensors"); }).find("factor 5"),
            std::string::npos);
  metadata["image_condition"] = R"({"kind":"colourise"})";
  EXPECT_NE(error_of([&] {
              checkpoint_info_from_metadata(metadata, "c.safetensors");
            }).find("unknown image condition 'colourise'"),
            std::string::npos);
  // a class-conditional model takes no condition channels
  auto both = info.model;
  both.num_classes = 10;
  EXPECT_THROW(validate(both), std::exception);
}

TEST(ImageConditionalTraining, TheLossFallsAndTheModelSamplesUnderItsCondition) {
  TempDir dir;
  auto data = load_dataset("mnist", Split::train, DataOptions{16, 256});
  for (const auto kind : {ImageConditionKind::inpaint, ImageConditionKind::super_resolution}) {
    SCOPED_TRACE(to_string(kind));
    CheckpointInfo info;
    info.image_condition = ImageCondition{kind, 4};
    info.model = unet_config_by_name("tiny", 1, 16);
    info.model.extra_in_channels = condition_channels(*info.image_condition, 1);
    info.data = DataInfo{data.name, 1, 16, data.num_classes};
    const auto config = small_training(dir / to_string(kind));
    train(config, info, data, torch::kCPU);
    const auto losses = logged_losses(config.out_dir);
    ASSERT_GE(losses.size(), 3u);
    EXPECT_LT(losses.back(), 0.8 * losses.front()) << "first " << losses.front() << ", last " << losses.back();

    const auto pipeline = load_pipeline(config.out_dir + "/checkpoint.safetensors");
    ASSERT_TRUE(pipeline.info().image_condition.has_value());
    EXPECT_EQ(pipeline.info().image_condition->kind, kind);
    const auto x0 = from_uint8(data.images.narrow(0, 0, 2));
    const auto c = kind == ImageConditionKind::inpaint
                       ? inpaint_condition(x0, random_known_masks(2, 16, at::detail::createCPUGenerator(3)))
                       : super_resolution_condition(x0, 4);
    GenerateOptions g = default_generate_options(pipeline);
    g.n = 2;
    g.steps = 5;
    g.image_conditions = c;
    g.guidance = 1.0;
    const auto guided = generate(pipeline, g);
    ASSERT_EQ(guided.sizes(), torch::IntArrayRef({2, 1, 16, 16}));
    EXPECT_TRUE(torch::isfinite(guided).all().item<bool>());
    EXPECT_TRUE(torch::equal(generate(pipeline, g), guided));  // the same seed: the same images
    g.image_conditions = c.flip(0);                            // the other condition: other images
    EXPECT_FALSE(torch::equal(generate(pipeline, g), guided));
    g.image_conditions = c.narrow(1, 0, 1).narrow(2, 0, 8);
    EXPECT_NE(error_of([&] { generate(pipeline, g); }).find("image conditions"), std::string::npos);
  }
  // a condition image for a model that takes none
  CheckpointInfo plain;
  plain.model = unet_config_by_name("tiny", 1, 16);
  plain.data = DataInfo{data.name, 1, 16, data.num_classes};
  save_checkpoint(dir / "plain.safetensors", UNet(plain.model), plain);
  GenerateOptions g;
  g.n = 1;
  g.steps = 2;
  g.image_conditions = torch::zeros({1, 1, 16, 16});
  EXPECT_NE(error_of([&] {
              generate(load_pipeline(dir / "plain.safetensors"), g);
            }).find("needs an image-conditional checkpoint"),
            std::string::npos);
}
