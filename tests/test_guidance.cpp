// Class conditioning: label dropout, the guided combination (1 + w) ε(x, y) − w ε(x, ∅), labels
// handed batch by batch, and the U-Net's "no label" class.
#include <gtest/gtest.h>

#include <cmath>

#include "diffuse/model/unet.h"
#include "diffuse/sampling/ddim.h"
#include "diffuse/diffusion/label_dropout.h"
#include "diffuse/sampling/guidance.h"
#include "diffuse/runtime/cuda_graph_network.h"

using namespace diffuse;

TEST(Guidance, LabelDropoutReplacesTheExpectedFraction) {
  torch::manual_seed(0);
  auto labels = torch::randint(0, 10, {100000}, torch::kLong);
  EXPECT_TRUE(torch::equal(drop_labels(labels, 10, 0.0), labels));
  EXPECT_TRUE((drop_labels(labels, 10, 1.0) == 10).all().item<bool>());
  auto dropped = drop_labels(labels, 10, 0.3);
  const double fraction = (dropped == 10).to(torch::kDouble).mean().item<double>();
  EXPECT_NEAR(fraction, 0.3, 5 * std::sqrt(0.3 * 0.7 / 100000));
  auto kept = dropped != 10;
  EXPECT_TRUE(torch::equal(dropped.masked_select(kept), labels.masked_select(kept)));  // the rest untouched
  EXPECT_THROW(drop_labels(labels, 10, 1.5), std::invalid_argument);
}

TEST(Guidance, CombinesConditionalAndUnconditionalInOneCall) {
  int calls = 0;
  // A toy network whose output depends on the label: f(x, t, y) = x · (y + 1).
  ConditionalDenoiser net = [&](const torch::Tensor& x, const torch::Tensor&, const torch::Tensor& y) {
    ++calls;
    return x * (y.to(torch::kFloat) + 1).view({-1, 1, 1, 1});
  };
  auto x = torch::randn({3, 1, 2, 2});
  auto t = torch::zeros({3}, torch::kLong);
  auto y = torch::tensor({0, 4, 7}, torch::kLong);
  const int64_t null_label = 10;
  const double w = 2.0;
  auto guided = classifier_free_guidance(net, null_label, w)(x, t, y);
  EXPECT_EQ(calls, 1);
  auto cond = x * (y.to(torch::kFloat) + 1).view({-1, 1, 1, 1}), uncond = x * (null_label + 1.0);
  EXPECT_TRUE(torch::allclose(guided, (1 + w) * cond - w * uncond, 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(classifier_free_guidance(net, null_label, 0.0)(x, t, y), cond));
  EXPECT_THROW(classifier_free_guidance(net, null_label, -1.0), std::invalid_argument);
}

TEST(Guidance, ClassRowsGiveOneRowPerClass) {
  auto r = class_rows(100, 10);
  EXPECT_EQ(r.per_row, 10);
  EXPECT_EQ(r.labels.scalar_type(), torch::kLong);
  EXPECT_EQ(r.labels[0].item<int64_t>(), 0);
  EXPECT_EQ(r.labels[19].item<int64_t>(), 1);
  EXPECT_EQ(r.labels[99].item<int64_t>(), 9);
  auto odd = class_rows(64, 10);  // 7 per row; the last row is short
  EXPECT_EQ(odd.per_row, 7);
  EXPECT_EQ(odd.labels[63].item<int64_t>(), 9);
  EXPECT_EQ(odd.labels.max().item<int64_t>(), 9);
}

TEST(Guidance, GenerateImagesHandsEachBatchItsOwnLabels) {
  GaussianDiffusion d(NoiseSchedule(ScheduleConfig{}), Objective::eps, torch::kCPU);
  DdimSampler sampler(d.schedule(), TimestepSpacing::leading, 0.0);
  std::vector<std::vector<int64_t>> seen;
  ConditionalDenoiser net = [&](const torch::Tensor& x, const torch::Tensor&, const torch::Tensor& y) {
    seen.emplace_back(y.data_ptr<int64_t>(), y.data_ptr<int64_t>() + y.numel());
    return torch::zeros_like(x);
  };
  auto labels = torch::tensor({3, 1, 4, 1, 5}, torch::kLong);
  auto gen = at::detail::createCPUGenerator(0);
  auto images = generate_images(d, sampler, net, labels, 5, 2, {1, 2, 2}, SampleOptions{2, true}, gen);
  EXPECT_EQ(images.size(0), 5);
  const std::vector<std::vector<int64_t>> expected{{3, 1}, {3, 1}, {4, 1}, {4, 1}, {5}, {5}};  // 2 steps per batch
  EXPECT_EQ(seen, expected);
}

TEST(Guidance, UNetWithoutLabelsIsTheNoLabelClass) {
  torch::manual_seed(1);
  auto config = unet_config_by_name("tiny", 1, 8);
  config.num_classes = 3;
  UNet net(config);
  // The last layer starts at zero (DDPM's init); perturb it so labels show in the output.
  for (auto& p : net->parameters()) p.data().add_(0.01 * torch::randn_like(p));
  torch::NoGradGuard no_grad;
  auto x = torch::randn({2, 1, 8, 8});
  auto t = torch::tensor({5, 9}, torch::kLong);
  auto none = net->forward(x, t);
  EXPECT_TRUE(torch::allclose(none, net->forward(x, t, torch::full({2}, 3, torch::kLong))));
  EXPECT_FALSE(torch::allclose(none, net->forward(x, t, torch::zeros({2}, torch::kLong))));
}

// On the CPU the CUDA-graph wrapper (runtime/cuda_graph_network.h) is the network itself: every call
// goes through, with its labels, and comes back unchanged.
TEST(Guidance, NetworkGraphWrapperCallsTheNetworkAsItIsOnTheCpu) {
  int calls = 0;
  ConditionalDenoiser net = [&](const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& y) {
    ++calls;
    return x * t.view({-1, 1, 1, 1}) + (y.defined() ? y.view({-1, 1, 1, 1}).to(torch::kFloat32) : torch::zeros({1}));
  };
  const auto wrapped = replay_as_cuda_graph(net);
  const auto x = torch::randn({3, 1, 2, 2});
  const auto t = torch::tensor({1, 2, 3}, torch::kLong), y = torch::tensor({4, 5, 6}, torch::kLong);
  EXPECT_TRUE(torch::equal(wrapped(x, t, y), net(x, t, y)));
  EXPECT_TRUE(torch::equal(wrapped(x, t, torch::Tensor()), x * t.view({-1, 1, 1, 1})));
  EXPECT_EQ(calls, 3);
  const auto plain = replay_as_cuda_graph(Denoiser([](const torch::Tensor& x, const torch::Tensor& t) { return x - t.view({-1, 1, 1, 1}); }));
  EXPECT_TRUE(torch::equal(plain(x, t), x - t.view({-1, 1, 1, 1})));
}
