// The Gaussian diffusion process of DDPM: forward noising q(x_t|x_0), the posterior
// q(x_{t−1}|x_t, x_0), turning a network output into (x̂_0, ε̂), the reverse mean μ_θ, and the
// training loss. Knows nothing about which network or which sampler.
//
// Timesteps `t` passed as tensors are 0-based indices (i = t_paper − 1), int64, shape [B].
#pragma once

#include <torch/torch.h>

#include <string>

#include "diffuse/schedule/noise_schedule.h"

namespace diffuse {

// What the network is trained to predict: the noise ε, the clean image x_0, or the velocity
// v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 (Salimans & Ho 2022, §4), which is neither near 0 nor near T.
enum class Objective { eps, x0, v };
std::string to_string(Objective objective);
Objective objective_from_string(const std::string& name);  // throws on unknown names

// A model output turned into both parameterisations.
struct Prediction {
  torch::Tensor x0;   // x̂_0
  torch::Tensor eps;  // ε̂
};

struct PosteriorMeanVariance {
  torch::Tensor mean;          // μ̃_t(x_t, x_0)
  torch::Tensor variance;      // β̃_t, broadcastable to x
  torch::Tensor log_variance;  // log β̃_t (clipped at t = 1)
};

// What clipping x̂_0 to [−1, 1] does to ε̂: recomputed from the clipped x̂_0 so that the pair stays
// consistent (improved-diffusion), or kept as the network gave it (diffusers' schedulers).
enum class ClippedEps { recompute, keep };

class GaussianDiffusion {
 public:
  GaussianDiffusion(NoiseSchedule schedule, Objective objective, torch::Device device,
                    ClippedEps clipped_eps = ClippedEps::recompute);

  const NoiseSchedule& schedule() const { return schedule_; }
  Objective objective() const { return objective_; }
  int64_t timesteps() const { return schedule_.timesteps(); }
  torch::Device device() const { return device_; }
  ClippedEps clipped_eps() const { return clipped_eps_; }

  // x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε,  ε ~ N(0, I)                      (DDPM eq. 4)
  torch::Tensor q_sample(const torch::Tensor& x0, const torch::Tensor& t, const torch::Tensor& noise) const;

  // q(x_{t−1} | x_t, x_0) = N(μ̃_t, β̃_t I),  μ̃_t = c1 x_0 + c2 x_t     (DDPM eq. 6-7)
  PosteriorMeanVariance q_posterior(const torch::Tensor& x0, const torch::Tensor& x_t, const torch::Tensor& t) const;

  // x̂_0 = (x_t − √(1 − ᾱ_t) ε) / √ᾱ_t                                   (DDPM eq. 4 inverted)
  torch::Tensor predict_x0_from_eps(const torch::Tensor& x_t, const torch::Tensor& t, const torch::Tensor& eps) const;
  // ε̂ = (x_t − √ᾱ_t x̂_0) / √(1 − ᾱ_t)
  torch::Tensor predict_eps_from_x0(const torch::Tensor& x_t, const torch::Tensor& t, const torch::Tensor& x0) const;

  // v̂ as both: x̂_0 = √ᾱ_t x_t − √(1 − ᾱ_t) v̂,  ε̂ = √(1 − ᾱ_t) x_t + √ᾱ_t v̂
  Prediction predict_from_v(const torch::Tensor& x_t, const torch::Tensor& t, const torch::Tensor& v) const;

  // The network output (ε, x_0 or v, per the objective) as both x̂_0 and ε̂; with `clip_x0`,
  // x̂_0 is clamped to [−1, 1] and ε̂ recomputed from it or kept (clipped_eps()).
  Prediction split_model_output(const torch::Tensor& model_out, const torch::Tensor& x_t,
                                const torch::Tensor& t, bool clip_x0) const;

  // μ_θ(x_t, t) = (x_t − β_t / √(1 − ᾱ_t) · ε_θ) / √α_t               (DDPM eq. 11)
  torch::Tensor p_mean_from_eps(const torch::Tensor& x_t, const torch::Tensor& t, const torch::Tensor& eps) const;

  // Training target for the objective: ε, x_0, or v = √ᾱ_t ε − √(1 − ᾱ_t) x_0.
  torch::Tensor training_target(const torch::Tensor& x0, const torch::Tensor& noise, const torch::Tensor& t) const;

  // Min-SNR-γ loss weights (Hang et al. 2023), shape [B]: the error in x̂_0 weighted by min(SNR_t, γ),
  // which each target's error carries as  ε: min(SNR_t, γ)/SNR_t,  x_0: min(SNR_t, γ),
  // v: min(SNR_t, γ)/(SNR_t + 1),  since ‖ε − ε̂‖² = SNR_t ‖x_0 − x̂_0‖² and ‖v − v̂‖² = (SNR_t + 1) ‖x_0 − x̂_0‖².
  // γ ≤ 0: all ones (L_simple).
  torch::Tensor min_snr_weights(const torch::Tensor& t, double gamma) const;

  // L_simple = E_{t, x_0, ε} ‖target − f_θ(x_t, t)‖²  (mean over every element)  (DDPM eq. 14)
  static torch::Tensor loss_simple(const torch::Tensor& model_out, const torch::Tensor& target);
  // mean_i (target − f_θ)²_{b,i} for each image b: [B]
  static torch::Tensor loss_per_image(const torch::Tensor& model_out, const torch::Tensor& target);
  // E_b w_b · mean_i (target − f_θ)²_{b,i}: L_simple with a weight per image (min_snr_weights)
  static torch::Tensor loss_simple(const torch::Tensor& model_out, const torch::Tensor& target,
                                   const torch::Tensor& weights);

  // Uniform t ~ U{0..T−1} for a batch of size B.
  torch::Tensor sample_timesteps(int64_t batch, const c10::optional<torch::Generator>& gen = c10::nullopt) const;

 private:
  NoiseSchedule schedule_;
  Objective objective_;
  torch::Device device_;
  ClippedEps clipped_eps_;
  // Device copies (float64) of the tables used with batched timesteps; `extract` hands them out
  // in x's precision, so that float64 x is computed to float64 accuracy.
  torch::Tensor betas_, alphas_, sqrt_alpha_bar_, sqrt_one_minus_alpha_bar_;
  torch::Tensor posterior_variance_, posterior_log_variance_clipped_;
  torch::Tensor posterior_mean_coef1_, posterior_mean_coef2_, snr_;
};

// table[t] reshaped to [B, 1, 1, ...] so that it broadcasts against x, in float64 where x is
// float64 and in float32 otherwise.
torch::Tensor extract(const torch::Tensor& table, const torch::Tensor& t, const torch::Tensor& x);

}  // namespace diffuse
