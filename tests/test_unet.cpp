// The U-Net: parameter counts of the named configurations and shape behaviour.
#include <gtest/gtest.h>

#include "diffuse/model/unet.h"

using namespace diffuse;

TEST(UNet, DdpmCifar10HasThePapersParameterCount) {
  // Ho et al. 2020 report 35.7M; the reference implementations build exactly 35,746,307.
  UNet net(unet_config_by_name("ddpm-cifar10", /*in_channels=*/3, /*image_size=*/32));
  EXPECT_EQ(net->parameter_count(), 35746307);
}

TEST(UNet, OutputHasInputShapeForOddSizes) {
  for (int64_t size : {28, 32, 13}) {
    UNet net(unet_config_by_name("tiny", /*in_channels=*/1, size));
    auto x = torch::randn({2, 1, size, size});
    auto t = torch::tensor({0, 999}, torch::kLong);
    auto out = net->forward(x, t);
    EXPECT_EQ(out.sizes(), x.sizes()) << "size " << size;
  }
}

TEST(UNet, StartsAtZeroOutputAndGetsGradients) {
  // conv_out starts at zero (DDPM init), so the initial prediction is exactly 0 ...
  UNet net(unet_config_by_name("mnist", 1, 28));
  auto x = torch::randn({2, 1, 28, 28});
  auto out = net->forward(x, torch::tensor({3, 500}, torch::kLong));
  EXPECT_EQ(out.abs().max().item<float>(), 0.0f);
  // ... yet the loss still reaches every layer through conv_out's weight gradient.
  (out - torch::randn_like(out)).pow(2).mean().backward();
  int64_t with_grad = 0, total = 0;
  for (const auto& p : net->parameters()) {
    ++total;
    if (p.grad().defined() && p.grad().abs().sum().item<double>() > 0) ++with_grad;
  }
  EXPECT_GT(with_grad, 0);
  EXPECT_LE(with_grad, total);
}

TEST(UNet, ConfigRoundTripsThroughJson) {
  auto c = unet_config_by_name("ddpm-cifar10", 3, 32);
  auto back = unet_config_from_json(to_json(c));
  EXPECT_EQ(to_json(back), to_json(c));
  auto bad = to_json(c);
  bad.erase("channels");
  EXPECT_THROW(unet_config_from_json(bad), std::runtime_error);
}
