// Helpers shared by the precision and CUDA tests: a U-Net with every weight random, a relative
// error, and a short fit of one fixed batch with TrainStep.
#pragma once

#include <torch/torch.h>

#include <string>
#include <utility>
#include <vector>

#include "diffuse/diffusion/gaussian_diffusion.h"
#include "diffuse/model/unet.h"
#include "diffuse/train/train_step.h"

namespace diffuse::testing {

// Every weight N(0, 0.05²) (the DDPM init zeroes the last layers, which would hide differences).
inline UNet random_unet(const std::string& name, int64_t channels, int64_t size, uint64_t seed) {
  torch::manual_seed(seed);
  UNet net(unet_config_by_name(name, channels, size));
  torch::NoGradGuard no_grad;
  for (auto& p : net->parameters()) p.normal_(0.0, 0.05);
  net->eval();
  return net;
}

// ‖a − b‖ / ‖b‖, on the CPU.
inline double relative_error(const torch::Tensor& a, const torch::Tensor& b) {
  return ((a.cpu() - b.cpu()).norm() / b.cpu().norm()).item<double>();
}

// L = mean(net(x, t)²) and ∂L/∂θ of every parameter, flattened into one vector (for comparing two
// kernels on a whole network).
inline std::pair<double, torch::Tensor> loss_and_flat_gradients(UNet& net, const torch::Tensor& x,
                                                                const torch::Tensor& t) {
  net->zero_grad();
  auto loss = net(x, t).square().mean();
  loss.backward();
  std::vector<torch::Tensor> flat;
  for (auto& p : net->parameters()) flat.push_back(p.grad().flatten().clone());
  return {loss.item<double>(), torch::cat(flat)};
}

// 60 TrainSteps of the tiny U-Net on one fixed batch of 16 12×12 images; returns the mean loss of
// the first five and of the last five steps.
inline std::pair<double, double> fit_fixed_batch(torch::Device device, Precision precision) {
  torch::manual_seed(0);
  auto config = unet_config_by_name("tiny", 1, 12);
  UNet model(config), ema_model(config);
  model->to(device);
  ema_model->to(device);
  GaussianDiffusion diffusion(NoiseSchedule(ScheduleConfig{}), Objective::eps, device);
  AdamW optimizer(model->parameters(), AdamWOptions{});
  Ema ema(0.99);
  TrainStepOptions options;
  options.precision = precision;
  TrainStep step(model, ema_model, diffusion, optimizer, ema, options);
  auto x0 = (torch::rand({16, 1, 12, 12}) * 2 - 1).to(device);
  double first = 0, last = 0;
  for (int i = 0; i < 60; ++i) {
    const double loss = step(x0, torch::Tensor(), 2e-3).item<double>();
    if (i < 5) first += loss / 5;
    if (i >= 55) last += loss / 5;
  }
  return {first, last};
}

}  // namespace diffuse::testing
