#include "diffuse/diffusion/elbo.h"

#include <cmath>
#include <stdexcept>

#include "diffuse/diffusion/losses.h"

namespace diffuse {

std::string to_string(ModelVariance v) { return v == ModelVariance::posterior ? "posterior" : "beta"; }

ModelVariance model_variance_from_string(const std::string& name) {
  if (name == "posterior") return ModelVariance::posterior;
  if (name == "beta") return ModelVariance::beta;
  throw std::invalid_argument("unknown model variance '" + name + "' (expected posterior or beta)");
}

std::vector<double> model_log_variances(const NoiseSchedule& s, ModelVariance variance) {
  if (variance == ModelVariance::posterior) return s.posterior_log_variance_clipped;
  // β_t, except at t = 1 where β̃_2 keeps the decoder as sharp as with the posterior choice
  std::vector<double> out(s.timesteps());
  for (int64_t i = 0; i < s.timesteps(); ++i) out[i] = std::log(s.betas[i]);
  if (s.timesteps() > 1) out[0] = std::log(s.posterior_variance[1]);
  return out;
}

torch::Tensor mean_flat(const torch::Tensor& x) { return x.flatten(1).mean(1); }

torch::Tensor prior_bpd(const NoiseSchedule& s, const torch::Tensor& x0) {
  const int64_t last = s.timesteps() - 1;
  auto x = x0.to(torch::kFloat64);
  // q(x_T|x_0) = N(√ᾱ_T x_0, (1 − ᾱ_T) I)
  auto mean = s.sqrt_alpha_bar[last] * x;
  auto logvar = torch::full_like(x, std::log(1.0 - s.alpha_bar[last]));
  auto zeros = torch::zeros_like(x);
  return mean_flat(normal_kl(mean, logvar, zeros, zeros)) / std::log(2.0);
}

torch::Tensor vb_term_bpd(const GaussianDiffusion& diffusion, ModelVariance variance, const torch::Tensor& x0_in,
                          const torch::Tensor& x_t_in, const torch::Tensor& t, const Prediction& pred) {
  const auto& s = diffusion.schedule();
  const auto x0 = x0_in.to(torch::kFloat64), x_t = x_t_in.to(torch::kFloat64);
  const auto x0_pred = pred.x0.to(torch::kFloat64);
  // q(x_{t−1}|x_t, x_0) = N(μ̃_t(x_0, x_t), β̃_t), and the model's mean is the posterior mean at
  // its own x̂_0: μ_θ = μ̃_t(x̂_0, x_t) (DDPM eq. 11 in x_0 form)
  const auto truth = diffusion.q_posterior(x0, x_t, t);
  const auto model_mean = diffusion.q_posterior(x0_pred, x_t, t).mean;
  const auto model_logvar =
      extract(torch::tensor(model_log_variances(s, variance), torch::kFloat64).to(x0.device()), t, x0).expand_as(x0);
  // L_{t−1} = KL(N(μ̃_t, β̃_t) ‖ N(μ_θ, σ_t²))
  const auto kl = mean_flat(normal_kl(truth.mean, truth.log_variance.expand_as(x0), model_mean, model_logvar));
  // L_0 = −log p_θ(x_0|x_1), log σ = ½ log σ²
  const auto decoder_nll = -mean_flat(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar));
  return torch::where(t.to(x0.device()) == 0, decoder_nll, kl) / std::log(2.0);
}

double eps_form_vlb_weight(const NoiseSchedule& s, ModelVariance variance, int64_t t) {
  if (t < 1 || t >= s.timesteps()) throw std::invalid_argument("eps_form_vlb_weight: index outside [1, T − 1]");
  const double sigma2 = std::exp(model_log_variances(s, variance)[t]);
  // w_t = β_t² / (2 σ_t² α_t (1 − ᾱ_t))
  return s.betas[t] * s.betas[t] / (2.0 * sigma2 * s.alphas[t] * (1.0 - s.alpha_bar[t]));
}

}  // namespace diffuse
