// The power-function EMA and its post-hoc reconstruction (Karras et al. 2024, "Analyzing and
// Improving the Training Dynamics of Diffusion Models", section 3 and appendix C).
//
// A power-function EMA of exponent γ averages the weights seen up to step t with the profile
//   p_{t,γ}(τ) = (γ + 1) τ^γ / t^(γ+1)  on 0 < τ ≤ t,
// whose width relative to t is σ_rel = √((γ + 1) / ((γ + 2)² (γ + 3))) (their eq. 123). Updated
// step by step it is θ̂_t = β_t θ̂_{t−1} + (1 − β_t) θ_t with β_t = (1 − 1/t)^(γ+1): the weight
// that θ_k gets at step t is (k^(γ+1) − (k − 1)^(γ+1)) / t^(γ+1), p's integral over (k − 1, k],
// so the discrete average is the profile's exactly when θ is constant between steps.
//
// Post hoc: snapshots θ̂_i of EMAs with profiles p_i (several t, one or two γ) combine into
// Σ x_i θ̂_i, whose profile Σ x_i p_i is the least-squares fit to a profile chosen after training:
//   A x = b,  A_ij = ⟨p_i, p_j⟩,  b_i = ⟨p_i, p_target⟩,  ⟨f, g⟩ = ∫ f g dτ.
#pragma once

#include <cstdint>
#include <vector>

namespace diffuse {

// σ_rel of exponent γ ≥ 0 (eq. 123); it falls from √(1/12) at γ = 0 towards 1/γ.
double power_ema_sigma_rel(double gamma);

// The γ ≥ 0 with power_ema_sigma_rel(γ) = σ_rel, the largest root of
// γ³ + 7γ² + (16 − σ_rel⁻²)γ + (12 − σ_rel⁻²) = 0; σ_rel must be in (0, √(1/12)].
double power_ema_gamma(double sigma_rel);

// The largest σ_rel a power-function EMA has (γ = 0: the plain mean of every step so far).
double power_ema_max_sigma_rel();

// Whether σ_rel is one a power-function EMA has: in (0, power_ema_max_sigma_rel()] (NaN is not).
bool is_power_ema_sigma_rel(double sigma_rel);

// β_t = (1 − 1/t)^(γ+1), the decay of the t-th update (t ≥ 1; β_1 = 0: the first update copies).
double power_ema_decay(double gamma, int64_t t);

// An EMA's averaging profile: p_{t,γ} at training step t.
struct PowerProfile {
  double t = 1.0;
  double gamma = 0.0;
};

// ⟨p_a, p_b⟩ = (γ_a + 1)(γ_b + 1) / (γ_a + γ_b + 1) · m^(γ_a+γ_b+1) / (t_a^(γ_a+1) t_b^(γ_b+1)),
// m = min(t_a, t_b).
double power_profile_dot(const PowerProfile& a, const PowerProfile& b);

struct PosthocEmaWeights {
  std::vector<double> weights;  // x_i, one per snapshot
  // ‖p_target − Σ x_i p_i‖² / ‖p_target‖²: 0 where the snapshots span the target's profile.
  double relative_error = 0.0;
};

// The least-squares x of the header's A x = b (float64; a minimum-norm solution where snapshots
// repeat a profile). Throws on an empty list or a profile with t ≤ 0 or γ < 0.
PosthocEmaWeights posthoc_ema_weights(const std::vector<PowerProfile>& snapshots, const PowerProfile& target);

}  // namespace diffuse
