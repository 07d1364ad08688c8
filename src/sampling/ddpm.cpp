#include "diffuse/sampling/ddpm.h"

#include <cmath>

namespace diffuse {

StepOutput DdpmSampler::step(const Prediction& pred, int64_t t, int64_t t_prev, const torch::Tensor& x_t,
                             const c10::optional<torch::Generator>& gen, const Predictor& /*predict*/) {
  const double alpha_bar = schedule_.alpha_bar_at(t);
  const double alpha_bar_prev = schedule_.alpha_bar_at(t_prev);
  const double beta = 1.0 - alpha_bar / alpha_bar_prev;   // β'_t = 1 − ᾱ_t/ᾱ_prev
  const double alpha = 1.0 - beta;                        // α'_t
  const double coef1 = beta * std::sqrt(alpha_bar_prev) / (1.0 - alpha_bar);
  const double coef2 = (1.0 - alpha_bar_prev) * std::sqrt(alpha) / (1.0 - alpha_bar);
  // μ̃ = coef1 · x̂_0 + coef2 · x_t                                     (DDPM eq. 7)
  auto mean = coef1 * pred.x0 + coef2 * x_t;
  if (t_prev < 0) return {mean, pred.x0};  // last step: no noise
  // σ² = β̃'_t = β'_t (1 − ᾱ_prev)/(1 − ᾱ_t), or β'_t
  const double variance = large_variance_ ? beta : beta * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar);
  return {mean + std::sqrt(variance) * randn_like_from(x_t, gen), pred.x0};
}

}  // namespace diffuse
