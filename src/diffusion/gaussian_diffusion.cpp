#include "diffuse/diffusion/gaussian_diffusion.h"

#include "diffuse/runtime/device.h"

#include <stdexcept>

namespace diffuse {

std::string to_string(Objective objective) {
  switch (objective) {
    case Objective::eps:
      return "eps";
    case Objective::x0:
      return "x0";
    case Objective::v:
      return "v";
  }
  return "?";
}

Objective objective_from_string(const std::string& name) {
  if (name == "eps") return Objective::eps;
  if (name == "x0") return Objective::x0;
  if (name == "v") return Objective::v;
  throw std::invalid_argument("unknown objective '" + name + "' (expected eps, x0 or v)");
}

torch::Tensor extract(const torch::Tensor& table, const torch::Tensor& t, const torch::Tensor& x) {
  std::vector<int64_t> shape(x.dim(), 1);
  shape[0] = t.size(0);
  // float64 for float64 x, float32 otherwise (bf16 and half x promote to it, as before)
  const auto dtype = x.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  return table.index_select(0, t.to(table.device(), torch::kLong)).to(dtype).view(shape);
}

GaussianDiffusion::GaussianDiffusion(NoiseSchedule schedule, Objective objective, torch::Device device,
                                     ClippedEps clipped_eps)
    : schedule_(std::move(schedule)), objective_(objective), device_(device), clipped_eps_(clipped_eps) {
  betas_ = NoiseSchedule::tensor(schedule_.betas, device);
  alphas_ = NoiseSchedule::tensor(schedule_.alphas, device);
  sqrt_alpha_bar_ = NoiseSchedule::tensor(schedule_.sqrt_alpha_bar, device);
  sqrt_one_minus_alpha_bar_ = NoiseSchedule::tensor(schedule_.sqrt_one_minus_alpha_bar, device);
  posterior_variance_ = NoiseSchedule::tensor(schedule_.posterior_variance, device);
  posterior_log_variance_clipped_ = NoiseSchedule::tensor(schedule_.posterior_log_variance_clipped, device);
  posterior_mean_coef1_ = NoiseSchedule::tensor(schedule_.posterior_mean_coef1, device);
  posterior_mean_coef2_ = NoiseSchedule::tensor(schedule_.posterior_mean_coef2, device);
  snr_ = NoiseSchedule::tensor(schedule_.snr, device);
}

torch::Tensor GaussianDiffusion::q_sample(const torch::Tensor& x0, const torch::Tensor& t,
                                          const torch::Tensor& noise) const {
  // x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε
  return extract(sqrt_alpha_bar_, t, x0) * x0 + extract(sqrt_one_minus_alpha_bar_, t, x0) * noise;
}

PosteriorMeanVariance GaussianDiffusion::q_posterior(const torch::Tensor& x0, const torch::Tensor& x_t,
                                                     const torch::Tensor& t) const {
  PosteriorMeanVariance out;
  // μ̃_t = β_t √ᾱ_{t−1}/(1 − ᾱ_t) · x_0 + (1 − ᾱ_{t−1}) √α_t/(1 − ᾱ_t) · x_t
  out.mean = extract(posterior_mean_coef1_, t, x_t) * x0 + extract(posterior_mean_coef2_, t, x_t) * x_t;
  out.variance = extract(posterior_variance_, t, x_t);                      // β̃_t
  out.log_variance = extract(posterior_log_variance_clipped_, t, x_t);
  return out;
}

torch::Tensor GaussianDiffusion::predict_x0_from_eps(const torch::Tensor& x_t, const torch::Tensor& t,
                                                     const torch::Tensor& eps) const {
  // x̂_0 = (x_t − √(1 − ᾱ_t) ε) / √ᾱ_t
  return (x_t - extract(sqrt_one_minus_alpha_bar_, t, x_t) * eps) / extract(sqrt_alpha_bar_, t, x_t);
}

torch::Tensor GaussianDiffusion::predict_eps_from_x0(const torch::Tensor& x_t, const torch::Tensor& t,
                                                     const torch::Tensor& x0) const {
  // ε̂ = (x_t − √ᾱ_t x̂_0) / √(1 − ᾱ_t)
  return (x_t - extract(sqrt_alpha_bar_, t, x_t) * x0) / extract(sqrt_one_minus_alpha_bar_, t, x_t);
}

Prediction GaussianDiffusion::predict_from_v(const torch::Tensor& x_t, const torch::Tensor& t,
                                             const torch::Tensor& v) const {
  const auto a = extract(sqrt_alpha_bar_, t, x_t), s = extract(sqrt_one_minus_alpha_bar_, t, x_t);
  // x̂_0 = √ᾱ x_t − √(1 − ᾱ) v̂,  ε̂ = √(1 − ᾱ) x_t + √ᾱ v̂   (a² + s² = 1 inverts v = a ε − s x_0)
  return {a * x_t - s * v, s * x_t + a * v};
}

Prediction GaussianDiffusion::split_model_output(const torch::Tensor& model_out, const torch::Tensor& x_t,
                                                 const torch::Tensor& t, bool clip_x0) const {
  Prediction p;
  switch (objective_) {
    case Objective::eps:
      p.eps = model_out;
      p.x0 = predict_x0_from_eps(x_t, t, model_out);
      break;
    case Objective::x0:
      p.x0 = model_out;
      p.eps = predict_eps_from_x0(x_t, t, model_out);
      break;
    case Objective::v:
      p = predict_from_v(x_t, t, model_out);
      break;
  }
  if (clip_x0) {
    p.x0 = p.x0.clamp(-1.0, 1.0);
    if (clipped_eps_ == ClippedEps::recompute) p.eps = predict_eps_from_x0(x_t, t, p.x0);
  }
  return p;
}

torch::Tensor GaussianDiffusion::p_mean_from_eps(const torch::Tensor& x_t, const torch::Tensor& t,
                                                 const torch::Tensor& eps) const {
  // μ_θ = (x_t − β_t/√(1 − ᾱ_t) · ε_θ) / √α_t
  const auto eps_coef = extract(betas_, t, x_t) / extract(sqrt_one_minus_alpha_bar_, t, x_t);
  return (x_t - eps_coef * eps) / extract(alphas_, t, x_t).sqrt();
}

torch::Tensor GaussianDiffusion::training_target(const torch::Tensor& x0, const torch::Tensor& noise,
                                                 const torch::Tensor& t) const {
  switch (objective_) {
    case Objective::eps:
      return noise;
    case Objective::x0:
      return x0;
    case Objective::v:
      break;
  }
  // v = √ᾱ_t ε − √(1 − ᾱ_t) x_0
  return extract(sqrt_alpha_bar_, t, x0) * noise - extract(sqrt_one_minus_alpha_bar_, t, x0) * x0;
}

torch::Tensor GaussianDiffusion::min_snr_weights(const torch::Tensor& t, double gamma) const {
  if (gamma <= 0) return torch::ones({t.size(0)}, snr_.options().dtype(torch::kFloat32));
  const auto snr = snr_.index_select(0, t.to(snr_.device(), torch::kLong));
  const auto clipped = snr.clamp_max(gamma);  // min(SNR_t, γ)
  torch::Tensor w;
  switch (objective_) {
    case Objective::eps:
      w = clipped / snr;
      break;
    case Objective::x0:
      w = clipped;
      break;
    case Objective::v:
      w = clipped / (snr + 1);
      break;
  }
  return w.to(torch::kFloat32);
}

torch::Tensor GaussianDiffusion::loss_simple(const torch::Tensor& model_out, const torch::Tensor& target) {
  return (model_out - target).pow(2).mean();
}

torch::Tensor GaussianDiffusion::loss_per_image(const torch::Tensor& model_out, const torch::Tensor& target) {
  return (model_out - target).pow(2).flatten(1).mean(1);
}

torch::Tensor GaussianDiffusion::loss_simple(const torch::Tensor& model_out, const torch::Tensor& target,
                                             const torch::Tensor& weights) {
  const auto per_image = loss_per_image(model_out, target);
  return (per_image * weights.to(per_image.scalar_type())).mean();
}

torch::Tensor GaussianDiffusion::sample_timesteps(int64_t batch, const c10::optional<torch::Generator>& gen) const {
  return to_device_async(torch::randint(0, timesteps(), {batch}, gen, torch::dtype(torch::kLong)), device_);
}

}  // namespace diffuse
