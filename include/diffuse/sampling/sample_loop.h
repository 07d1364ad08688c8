// The one loop that drives any Sampler from x_T to x_0: asks the network, turns its output into
// (x̂_0, ε̂), lets the sampler step, and reports every step to a callback (progress, trajectory).
#pragma once

#include <torch/torch.h>

#include <functional>

#include "diffuse/diffusion/gaussian_diffusion.h"
#include "diffuse/sampling/sampler.h"

namespace diffuse {

// The network: (x_t [B,C,H,W], t [B] int64) → its raw output (ε or x_0 per the objective).
using Denoiser = std::function<torch::Tensor(const torch::Tensor& x_t, const torch::Tensor& t)>;
// A label-aware network: (x_t, t, y) → raw output; y [B] int64, or undefined for "no label".
using ConditionalDenoiser =
    std::function<torch::Tensor(const torch::Tensor& x_t, const torch::Tensor& t, const torch::Tensor& y)>;

struct SampleStep {
  int64_t index;   // 0 .. steps−1
  int64_t steps;   // S
  int64_t t;       // 0-based timestep of x_t
  const torch::Tensor& x_t;
  const torch::Tensor& x0_pred;
};
using StepCallback = std::function<void(const SampleStep&)>;

struct SampleOptions {
  int64_t steps = 50;
  bool clip_x0 = true;  // clamp x̂_0 to [−1, 1] (pixel data lives there)
  int64_t start_t = -1; // the timestep of the input x (−1: T − 1, pure noise); editing starts lower
};

// The network as samplers see it: x and a timestep → split_model_output (x̂_0, ε̂), clipped or not.
// `diffusion` and `denoiser` must outlive the returned Predictor.
Predictor make_predictor(const GaussianDiffusion& diffusion, const Denoiser& denoiser, bool clip_x0);

// Runs the reverse process from x_T (or from x at options.start_t) and returns x_0. Runs under NoGradGuard.
torch::Tensor sample_loop(const GaussianDiffusion& diffusion, Sampler& sampler, const Denoiser& denoiser,
                          torch::Tensor x_T, const SampleOptions& options,
                          const c10::optional<torch::Generator>& gen, const StepCallback& callback = {});

// Draws `n` images of shape [C, H, W] in batches of `batch_size`: each batch's x_T ~ N(0, I) comes
// from `gen` in order, so the same seed gives the same images. The callback also gets the index
// of the batch's first image. Returns [n, C, H, W] on the CPU.
using BatchStepCallback = std::function<void(int64_t first_image, const SampleStep&)>;
torch::Tensor generate_images(const GaussianDiffusion& diffusion, Sampler& sampler, const Denoiser& denoiser,
                              int64_t n, int64_t batch_size, const std::vector<int64_t>& image_shape,
                              const SampleOptions& options, const torch::Generator& gen,
                              const BatchStepCallback& callback = {});
// The same with conditions for a label-aware network ([n] labels or [n, L] token ids), handed to it batch by batch.
// With `on_batch`, each finished batch [b, C, H, W] (CPU) is handed to it with the index of its first image and not
// kept: the result is then undefined, and memory does not grow with n.
using BatchDoneCallback = std::function<void(int64_t first_image, const torch::Tensor& images)>;
torch::Tensor generate_images(const GaussianDiffusion& diffusion, Sampler& sampler, const ConditionalDenoiser& denoiser,
                              const torch::Tensor& labels, int64_t n, int64_t batch_size,
                              const std::vector<int64_t>& image_shape, const SampleOptions& options,
                              const torch::Generator& gen, const BatchStepCallback& callback = {},
                              const BatchDoneCallback& on_batch = {});

}  // namespace diffuse
