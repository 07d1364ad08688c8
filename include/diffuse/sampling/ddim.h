// DDIM (Song, Meng & Ermon 2021, eq. 12 and 16).
#pragma once

#include "diffuse/sampling/sampler.h"

namespace diffuse {

//   x_prev = √ᾱ_prev x̂_0 + √(1 − ᾱ_prev − σ_t²) ε̂ + σ_t z
//   σ_t = η √((1 − ᾱ_prev)/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev)
// η = 0 is deterministic; η = 1 on the full grid is DDPM with σ_t² = β̃_t.
class DdimSampler : public Sampler {
 public:
  DdimSampler(const NoiseSchedule& schedule, TimestepSpacing spacing, double eta)
      : Sampler(schedule, spacing), eta_(eta) {}

  std::string name() const override { return "ddim"; }
  StepOutput step(const Prediction& pred, int64_t t, int64_t t_prev, const torch::Tensor& x_t,
                  const c10::optional<torch::Generator>& gen, const Predictor& predict) override;

  // σ_t for a step t → t_prev.
  double sigma(int64_t t, int64_t t_prev) const;

 private:
  double eta_;
};

}  // namespace diffuse
