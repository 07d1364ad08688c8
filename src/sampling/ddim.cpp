#include "diffuse/sampling/ddim.h"

#include <algorithm>
#include <cmath>

namespace diffuse {

double DdimSampler::sigma(int64_t t, int64_t t_prev) const {
  const double alpha_bar = schedule_.alpha_bar_at(t);
  const double alpha_bar_prev = schedule_.alpha_bar_at(t_prev);
  // σ_t = η √((1 − ᾱ_prev)/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev)                 (DDIM eq. 16)
  return eta_ * std::sqrt((1.0 - alpha_bar_prev) / (1.0 - alpha_bar)) * std::sqrt(1.0 - alpha_bar / alpha_bar_prev);
}

StepOutput DdimSampler::step(const Prediction& pred, int64_t t, int64_t t_prev, const torch::Tensor& x_t,
                             const c10::optional<torch::Generator>& gen, const Predictor& /*predict*/) {
  const double alpha_bar_prev = schedule_.alpha_bar_at(t_prev);
  const double sigma_t = sigma(t, t_prev);
  // "direction pointing to x_t": √(1 − ᾱ_prev − σ_t²) ε̂
  const double dir_coef = std::sqrt(std::max(0.0, 1.0 - alpha_bar_prev - sigma_t * sigma_t));
  // x_prev = √ᾱ_prev x̂_0 + √(1 − ᾱ_prev − σ²) ε̂ + σ z                 (DDIM eq. 12)
  auto x_prev = std::sqrt(alpha_bar_prev) * pred.x0 + dir_coef * pred.eps;
  if (sigma_t > 0.0) x_prev = x_prev + sigma_t * randn_like_from(x_t, gen);
  return {x_prev, pred.x0};
}

}  // namespace diffuse
