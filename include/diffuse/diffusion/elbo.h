// The terms of the variational bound (DDPM eq. 5), in bits per dimension:
//   −log p_θ(x_0) ≤ L_T + Σ_{t=2..T} L_{t−1} + L_0
//   L_T     = KL(q(x_T|x_0) ‖ N(0, I))                        prior matching (no parameters)
//   L_{t−1} = KL(q(x_{t−1}|x_t, x_0) ‖ p_θ(x_{t−1}|x_t))      consistency, t = 2..T
//   L_0     = −log p_θ(x_0|x_1), the discretized Gaussian decoder over 256 pixel bins
// Every term is averaged over the D = C·H·W dimensions and divided by ln 2.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "diffuse/diffusion/gaussian_diffusion.h"

namespace diffuse {

// The reverse-process variance σ_t² of p_θ(x_{t−1}|x_t) = N(μ_θ, σ_t² I) (DDPM §3.2):
//   posterior: σ_t² = β̃_t (log clipped at t = 1);  beta: σ_t² = β_t (β̃_2 at t = 1, as iDDPM).
enum class ModelVariance { posterior, beta };
std::string to_string(ModelVariance v);
ModelVariance model_variance_from_string(const std::string& name);

// log σ_t² for every 0-based index, float64.
std::vector<double> model_log_variances(const NoiseSchedule& schedule, ModelVariance variance);

// L_T per image: [B].
torch::Tensor prior_bpd(const NoiseSchedule& schedule, const torch::Tensor& x0);

// Per image, [B]: L_{t−1} where the 0-based index t[b] ≥ 1, L_0 where t[b] = 0; given
// x_t ~ q(x_t|x_0) at those indices and the network's (unclipped) prediction. Float64; the means
// are the diffusion's q_posterior at x_0 and at x̂_0.
torch::Tensor vb_term_bpd(const GaussianDiffusion& diffusion, ModelVariance variance, const torch::Tensor& x0,
                          const torch::Tensor& x_t, const torch::Tensor& t, const Prediction& pred);

// The weight of L_{t−1} in ε form (DDPM eq. 12), 0-based index t ≥ 1, in nats per dimension:
//   L_{t−1} = w_t · ‖ε − ε_θ‖²/D + const,  w_t = β_t² / (2 σ_t² α_t (1 − ᾱ_t))
// (the constant is 0 for σ_t² = β̃_t). L_simple drops w_t (DDPM eq. 14).
double eps_form_vlb_weight(const NoiseSchedule& schedule, ModelVariance variance, int64_t t);

// Mean over all but the batch dimension: [B, ...] → [B].
torch::Tensor mean_flat(const torch::Tensor& x);

}  // namespace diffuse
