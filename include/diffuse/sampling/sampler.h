// One interface for every sampler: which timesteps it visits, and one update x_t → x_prev.
// The loop that drives a sampler lives in sample_loop.h. Samplers never see the network itself:
// they get its prediction at (x_t, t), and a Predictor for solvers that look again (Heun).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
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

// The network as samplers see it: (x, t) → (x̂_0, ε̂), with the same clipping as the loop.
using Predictor = std::function<Prediction(const torch::Tensor& x, int64_t t)>;

class Sampler {
 public:
  Sampler(const NoiseSchedule& schedule, TimestepSpacing spacing) : schedule_(schedule), spacing_(spacing) {}
  virtual ~Sampler() = default;
  virtual std::string name() const = 0;
  // The 0-based timesteps visited with S steps, largest first, spaced over [0, t_start]
  // (t_start = −1: the whole chain, T − 1). Editing starts part-way, at t_start < T − 1.
  std::vector<int64_t> timesteps(int64_t steps, int64_t t_start = -1) const;
  // One update from x_t at index t to index t_prev (t_prev = −1 is the end, where ᾱ = 1).
  // `pred` is the network's prediction at (x_t, t) as both x̂_0 and ε̂; `predict` evaluates the
  // network elsewhere (only second-order one-step solvers use it).
  virtual StepOutput step(const Prediction& pred, int64_t t, int64_t t_prev, const torch::Tensor& x_t,
                          const c10::optional<torch::Generator>& gen, const Predictor& predict) = 0;
  // Network evaluations for S steps (S for all but Heun).
  virtual int64_t evaluations(int64_t steps) const { return steps; }
  // Forget multistep history (no-op for one-step samplers).
  virtual void reset() {}

 protected:
  const NoiseSchedule& schedule_;
  TimestepSpacing spacing_;
};

struct SamplerConfig {
  std::string name = "ddim";                            // ddpm | ddim | euler | heun | dpm++2m
  TimestepSpacing spacing = TimestepSpacing::leading;
  double eta = 0.0;                                     // DDIM only
  bool ddpm_large_variance = false;                     // DDPM: σ² = β_t instead of β̃_t
};

std::unique_ptr<Sampler> make_sampler(const SamplerConfig& config, const NoiseSchedule& schedule);

// S for a run of `sampler` on a chain of T steps: `requested` where > 0, else T for ddpm and 50
// for the others; throws std::invalid_argument where S > T.
int64_t sampling_steps(const std::string& sampler, int64_t requested, int64_t timesteps);
std::vector<std::string> sampler_names();

// ε ~ N(0, I) shaped like `like`, drawn from `gen` (on the generator's device, then moved).
torch::Tensor randn_like_from(const torch::Tensor& like, const c10::optional<torch::Generator>& gen);

}  // namespace diffuse
