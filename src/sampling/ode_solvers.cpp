#include "diffuse/sampling/ode_solvers.h"

#include <cmath>

namespace diffuse {

double karras_sigma(const NoiseSchedule& schedule, int64_t t) {
  const double alpha_bar = schedule.alpha_bar_at(t);
  return std::sqrt((1.0 - alpha_bar) / alpha_bar);
}

StepOutput EulerSampler::step(const Prediction& pred, int64_t t, int64_t t_prev, const torch::Tensor& x_t,
                              const c10::optional<torch::Generator>& /*gen*/, const Predictor& /*predict*/) {
  const double sigma = karras_sigma(schedule_, t), sigma_prev = karras_sigma(schedule_, t_prev);
  // x̃_prev = x_t/√ᾱ_t + (σ_prev − σ_t) ε̂;  x_prev = √ᾱ_prev x̃_prev
  auto x_tilde_prev = x_t / std::sqrt(schedule_.alpha_bar_at(t)) + (sigma_prev - sigma) * pred.eps;
  return {std::sqrt(schedule_.alpha_bar_at(t_prev)) * x_tilde_prev, pred.x0};
}

StepOutput HeunSampler::step(const Prediction& pred, int64_t t, int64_t t_prev, const torch::Tensor& x_t,
                             const c10::optional<torch::Generator>& /*gen*/, const Predictor& predict) {
  const double sigma = karras_sigma(schedule_, t), sigma_prev = karras_sigma(schedule_, t_prev);
  const double h = sigma_prev - sigma;
  const double sqrt_ab_prev = std::sqrt(schedule_.alpha_bar_at(t_prev));
  auto x_tilde = x_t / std::sqrt(schedule_.alpha_bar_at(t));
  auto x_tilde_euler = x_tilde + h * pred.eps;  // predictor: one Euler step
  if (t_prev < 0) return {x_tilde_euler, pred.x0};  // σ_prev = 0, ᾱ_prev = 1
  TORCH_CHECK(predict, "heun: the sampler needs a Predictor for its second network call");
  // corrector: the slope at the Euler point, averaged with the slope at the start
  const Prediction pred_end = predict(sqrt_ab_prev * x_tilde_euler, t_prev);
  auto x_tilde_prev = x_tilde + (0.5 * h) * (pred.eps + pred_end.eps);
  return {sqrt_ab_prev * x_tilde_prev, pred.x0};
}

double DpmSolverPP2MSampler::lambda(int64_t t) const {
  const double alpha_bar = schedule_.alpha_bar_at(t);
  return 0.5 * std::log(alpha_bar / (1.0 - alpha_bar));
}

void DpmSolverPP2MSampler::reset() {
  x0_last_ = torch::Tensor();
  h_last_ = 0.0;
}

StepOutput DpmSolverPP2MSampler::step(const Prediction& pred, int64_t t, int64_t t_prev, const torch::Tensor& x_t,
                                      const c10::optional<torch::Generator>& /*gen*/, const Predictor& /*predict*/) {
  if (t_prev < 0) {  // s_prev = 0, λ_prev = ∞: the first-order update is x̂_0 itself
    reset();
    return {pred.x0, pred.x0};
  }
  const double alpha_bar = schedule_.alpha_bar_at(t), alpha_bar_prev = schedule_.alpha_bar_at(t_prev);
  const double s = std::sqrt(1.0 - alpha_bar), s_prev = std::sqrt(1.0 - alpha_bar_prev);
  const double alpha_prev = std::sqrt(alpha_bar_prev);
  const double h = lambda(t_prev) - lambda(t);
  // First order (DDIM) until there is a previous x̂_0, and into index 0: λ_0 = ½ log(ᾱ_1/β_1) lies
  // far beyond the rest of a leading or linspace grid, so r ≪ 1 there and the second-order
  // extrapolation (1 + 1/(2r)) overshoots (as diffusers' lower_order_final).
  torch::Tensor d = pred.x0;
  if (x0_last_.defined() && t_prev > 0) {
    const double r = h_last_ / h;
    d = (1.0 + 0.5 / r) * pred.x0 - (0.5 / r) * x0_last_;
  }
  // x_prev = (s_prev/s_t) x_t − α_prev (e^{−h} − 1) D
  auto x_prev = (s_prev / s) * x_t - alpha_prev * std::expm1(-h) * d;
  x0_last_ = pred.x0;
  h_last_ = h;
  return {x_prev, pred.x0};
}

}  // namespace diffuse
