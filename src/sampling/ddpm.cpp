#include "diffuse/sampling/ddpm.h"

#include <cmath>

namespace diffuse {

StepOutput DdpmSampler::step(const Prediction& pred, int64_t t, int64_t t_prev, const torch::Tensor& x_t,
                             const c10::optional<torch::Generator>& gen, const Predictor& /*predict*/) {
  // q(x_prev | x_t, x̂_0) with the respaced β'_t = 1 − ᾱ_t/ᾱ_prev             (DDPM eq. 7)
  const PosteriorCoefficients q = schedule_.posterior(t, t_prev);
  // μ̃ = coef1 · x̂_0 + coef2 · x_t
  auto mean = q.x0_coef * pred.x0 + q.xt_coef * x_t;
  if (t_prev < 0) return {mean, pred.x0};  // last step: no noise
  // σ² = β̃'_t, or β'_t
  const double variance = large_variance_ ? q.beta : q.variance;
  return {mean + std::sqrt(variance) * randn_like_from(x_t, gen), pred.x0};
}

}  // namespace diffuse
