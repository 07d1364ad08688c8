// DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), on any sub-grid of timesteps.
#pragma once

#include "diffuse/sampling/sampler.h"

namespace diffuse {

// Between two visited indices t > t_prev the step uses the respaced β (exact on a sub-grid):
//   β'_t = 1 − ᾱ_t / ᾱ_{t_prev},  α'_t = 1 − β'_t
//   x_prev = μ̃(x_t, x̂_0) + σ_t z,  μ̃ = β'_t √ᾱ_prev/(1 − ᾱ_t) x̂_0 + (1 − ᾱ_prev) √α'_t/(1 − ᾱ_t) x_t
//   σ_t² = β̃'_t = β'_t (1 − ᾱ_prev)/(1 − ᾱ_t)   or, with large variance, σ_t² = β'_t
// and no noise at the last step (t_prev = −1), which returns x̂_0.
class DdpmSampler : public Sampler {
 public:
  DdpmSampler(const NoiseSchedule& schedule, TimestepSpacing spacing, bool large_variance)
      : Sampler(schedule, spacing), large_variance_(large_variance) {}

  std::string name() const override { return "ddpm"; }
  StepOutput step(const Prediction& pred, int64_t t, int64_t t_prev, const torch::Tensor& x_t,
                  const c10::optional<torch::Generator>& gen, const Predictor& predict) override;

 private:
  bool large_variance_;
};

}  // namespace diffuse
