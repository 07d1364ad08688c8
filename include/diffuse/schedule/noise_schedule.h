// β schedules and every table derived from them (DDPM, Ho et al. 2020, §2 and eq. 6-7).
// Computed once in float64 on the host; `tensor()` gives float64 device copies.
// Indexing: paper notation is 1-based (t = 1..T); arrays are 0-based, index i = t − 1.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

namespace diffuse {

enum class BetaSchedule { linear, cosine, scaled_linear, trained };

std::string to_string(BetaSchedule kind);
BetaSchedule beta_schedule_from_string(const std::string& name);  // throws on unknown names

// The longest chain a file may ask for (T tables of float64 are allocated from it).
constexpr int64_t kMaxTimesteps = 100000;

struct ScheduleConfig {
  BetaSchedule kind = BetaSchedule::linear;
  int64_t timesteps = 1000;   // T
  double beta_start = 1e-4;   // β_1   (linear, scaled-linear)
  double beta_end = 0.02;     // β_T   (linear, scaled-linear)
  double cosine_s = 0.008;    // offset s of the cosine schedule
  std::vector<double> trained_betas;  // trained: β_1..β_T as given (diffusers' trained_betas)
};

// β_1..β_T for a schedule.
//   linear:        β_t = linspace(β_start, β_end, T)
//   scaled-linear: β_t = linspace(√β_start, √β_end, T)²
//   cosine:        ᾱ(t) = f(t)/f(0), f(t) = cos²(((t/T) + s)/(1 + s) · π/2),
//                  β_t = min(1 − ᾱ(t)/ᾱ(t−1), 0.999)     (Nichol & Dhariwal 2021, eq. 17)
//   trained:       β_t as listed (T of them, each in (0, 1))
std::vector<double> make_betas(const ScheduleConfig& config);

// The posterior q(x_prev | x_t, x_0) = N(μ̃, β̃ I) between any two points of the chain with
// ᾱ_t < ᾱ_prev (DDPM eq. 6-7; on the full grid ᾱ_prev = ᾱ_{t−1}, on a sub-grid the respaced
// β' = 1 − ᾱ_t/ᾱ_prev takes β_t's place):
//   μ̃ = x0_coef · x_0 + xt_coef · x_t
//   x0_coef = β' √ᾱ_prev / (1 − ᾱ_t),  xt_coef = (1 − ᾱ_prev) √α' / (1 − ᾱ_t),  α' = ᾱ_t/ᾱ_prev
//   β̃ = β' (1 − ᾱ_prev) / (1 − ᾱ_t)
// The one home of these formulas: the schedule's tables, the DDPM step and the ELBO all use it.
struct PosteriorCoefficients {
  double beta;      // β' = 1 − ᾱ_t/ᾱ_prev
  double x0_coef;   // weight of x_0 in μ̃
  double xt_coef;   // weight of x_t in μ̃
  double variance;  // β̃
};
PosteriorCoefficients posterior_coefficients(double alpha_bar, double alpha_bar_prev);

// All per-step quantities of the forward process and its posterior, float64, index i = t − 1.
struct NoiseSchedule {
  explicit NoiseSchedule(std::vector<double> betas);
  explicit NoiseSchedule(const ScheduleConfig& config) : NoiseSchedule(make_betas(config)) {}

  int64_t timesteps() const { return static_cast<int64_t>(betas.size()); }

  // ᾱ at a 0-based index; index −1 means "before the first step", where ᾱ = 1.
  double alpha_bar_at(int64_t index) const { return index < 0 ? 1.0 : alpha_bar.at(index); }
  // q(x_{t_prev} | x_t, x_0) for a step between two 0-based indices t > t_prev ≥ −1.
  PosteriorCoefficients posterior(int64_t t, int64_t t_prev) const {
    return posterior_coefficients(alpha_bar_at(t), alpha_bar_at(t_prev));
  }

  // Float64 copy of one table on a device, for indexing with a batch of timesteps.
  static torch::Tensor tensor(const std::vector<double>& table, torch::Device device);

  std::vector<double> betas;                      // β_t
  std::vector<double> alphas;                     // α_t = 1 − β_t
  std::vector<double> alpha_bar;                  // ᾱ_t = ∏_{s≤t} α_s
  std::vector<double> alpha_bar_prev;             // ᾱ_{t−1}, with ᾱ_0 = 1
  std::vector<double> sqrt_alpha_bar;             // √ᾱ_t
  std::vector<double> sqrt_one_minus_alpha_bar;   // √(1 − ᾱ_t)
  std::vector<double> posterior_variance;         // β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)
  // log β̃_t with β̃_1 (= 0) replaced by β̃_2: the log of 0 is −∞ and the decoder at t = 1
  // never uses it, but tables indexed by t must stay finite.
  std::vector<double> posterior_log_variance_clipped;
  std::vector<double> posterior_mean_coef1;       // β_t √ᾱ_{t−1} / (1 − ᾱ_t)        (x_0 weight)
  std::vector<double> posterior_mean_coef2;       // (1 − ᾱ_{t−1}) √α_t / (1 − ᾱ_t)  (x_t weight)
  std::vector<double> snr;                        // SNR(t) = ᾱ_t / (1 − ᾱ_t)
};

}  // namespace diffuse
