// One interface for every sampler: which timesteps it visits, and one update x_t → x_prev.
// The loop that drives a sampler lives in sample_loop.h; samplers never see the network.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "diffuse/diffusion/gaussian_diffusion.h"
#include "diffuse/schedule/timestep_spacing.h"

namespace diffuse {

struct StepOutput {
  torch::Tensor x_prev;   // the sample at t_prev
  torch::Tensor x0_pred;  // x̂_0 used for the step
};

class Sampler {
 public:
  virtual ~Sampler() = default;
  virtual std::string name() const = 0;
  // The 0-based timesteps visited with S steps, largest first.
  virtual std::vector<int64_t> timesteps(int64_t steps) const = 0;
  // One update from x_t at index t to index t_prev (t_prev = −1 is the end, where ᾱ = 1).
  // `pred` is the network's prediction at (x_t, t) as both x̂_0 and ε̂.
  virtual StepOutput step(const Prediction& pred, int64_t t, int64_t t_prev, const torch::Tensor& x_t,
                          const c10::optional<torch::Generator>& gen) = 0;
  // Forget multistep history (no-op for one-step samplers).
  virtual void reset() {}
};

struct SamplerConfig {
  std::string name = "ddim";                            // ddpm | ddim
  TimestepSpacing spacing = TimestepSpacing::leading;
  double eta = 0.0;                                     // DDIM only
  bool ddpm_large_variance = false;                     // DDPM: σ² = β_t instead of β̃_t
};

std::unique_ptr<Sampler> make_sampler(const SamplerConfig& config, const NoiseSchedule& schedule);
std::vector<std::string> sampler_names();

// ε ~ N(0, I) shaped like `like`, drawn from `gen` (on the generator's device, then moved).
torch::Tensor randn_like_from(const torch::Tensor& like, const c10::optional<torch::Generator>& gen);

}  // namespace diffuse
