#include "diffuse/schedule/noise_schedule.h"

#include <cmath>
#include <stdexcept>

namespace diffuse {

std::string to_string(BetaSchedule kind) {
  switch (kind) {
    case BetaSchedule::linear: return "linear";
    case BetaSchedule::cosine: return "cosine";
    case BetaSchedule::scaled_linear: return "scaled-linear";
    case BetaSchedule::trained:
      return "trained";
  }
  return "?";
}

BetaSchedule beta_schedule_from_string(const std::string& name) {
  if (name == "linear") return BetaSchedule::linear;
  if (name == "cosine") return BetaSchedule::cosine;
  if (name == "scaled-linear" || name == "scaled_linear") return BetaSchedule::scaled_linear;
  if (name == "trained") return BetaSchedule::trained;
  throw std::invalid_argument("unknown beta schedule '" + name +
                              "' (expected linear, cosine, scaled-linear or trained)");
}

namespace {

// numpy.linspace(start, end, n): start + i·(end − start)/(n − 1), last value exactly `end`.
std::vector<double> linspace(double start, double end, int64_t n) {
  std::vector<double> out(n);
  if (n == 1) {
    out[0] = start;
    return out;
  }
  const double step = (end - start) / static_cast<double>(n - 1);
  for (int64_t i = 0; i < n; ++i) out[i] = start + static_cast<double>(i) * step;
  out[n - 1] = end;
  return out;
}

}  // namespace

std::vector<double> make_betas(const ScheduleConfig& config) {
  const int64_t T = config.timesteps;
  if (T < 1) throw std::invalid_argument("schedule: timesteps must be >= 1, got " + std::to_string(T));
  std::vector<double> betas;
  switch (config.kind) {
    case BetaSchedule::linear:
      betas = linspace(config.beta_start, config.beta_end, T);
      break;
    case BetaSchedule::scaled_linear:
      betas = linspace(std::sqrt(config.beta_start), std::sqrt(config.beta_end), T);
      for (double& b : betas) b = b * b;
      break;
    case BetaSchedule::cosine: {
      const double s = config.cosine_s;
      auto f = [&](double t) {  // f(t) = cos²(((t/T) + s)/(1 + s) · π/2)
        const double c = std::cos((t / static_cast<double>(T) + s) / (1.0 + s) * M_PI / 2.0);
        return c * c;
      };
      betas.resize(T);
      for (int64_t i = 0; i < T; ++i) {  // β_t = min(1 − ᾱ(t)/ᾱ(t−1), 0.999), t = i + 1
        betas[i] = std::min(1.0 - f(static_cast<double>(i + 1)) / f(static_cast<double>(i)), 0.999);
      }
      break;
    }
    case BetaSchedule::trained:
      if (static_cast<int64_t>(config.trained_betas.size()) != T) {
        throw std::invalid_argument("schedule: " + std::to_string(config.trained_betas.size()) +
                                    " trained betas for T = " + std::to_string(T));
      }
      betas = config.trained_betas;
      break;
  }
  for (int64_t i = 0; i < T; ++i) {
    if (!(betas[i] > 0.0 && betas[i] < 1.0)) {
      throw std::invalid_argument("schedule: beta_" + std::to_string(i + 1) + " = " +
                                  std::to_string(betas[i]) + " is outside (0, 1)");
    }
  }
  return betas;
}

PosteriorCoefficients posterior_coefficients(double alpha_bar, double alpha_bar_prev) {
  PosteriorCoefficients c;
  c.beta = 1.0 - alpha_bar / alpha_bar_prev;                                        // β'
  c.x0_coef = c.beta * std::sqrt(alpha_bar_prev) / (1.0 - alpha_bar);               // β' √ᾱ_prev / (1 − ᾱ_t)
  c.xt_coef = (1.0 - alpha_bar_prev) * std::sqrt(alpha_bar / alpha_bar_prev) / (1.0 - alpha_bar);  // √α' = √(ᾱ_t/ᾱ_prev)
  c.variance = c.beta * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar);                 // β̃ = β' (1 − ᾱ_prev) / (1 − ᾱ_t)
  return c;
}

NoiseSchedule::NoiseSchedule(std::vector<double> betas_in) : betas(std::move(betas_in)) {
  const size_t T = betas.size();
  TORCH_CHECK(T >= 1, "NoiseSchedule needs at least one beta");
  alphas.resize(T);
  alpha_bar.resize(T);
  alpha_bar_prev.resize(T);
  sqrt_alpha_bar.resize(T);
  sqrt_one_minus_alpha_bar.resize(T);
  posterior_variance.resize(T);
  posterior_log_variance_clipped.resize(T);
  posterior_mean_coef1.resize(T);
  posterior_mean_coef2.resize(T);
  snr.resize(T);

  double running = 1.0;
  for (size_t i = 0; i < T; ++i) {
    TORCH_CHECK(betas[i] > 0.0 && betas[i] < 1.0, "beta_", i + 1, " = ", betas[i], " is outside (0, 1)");
    alphas[i] = 1.0 - betas[i];                 // α_t = 1 − β_t
    alpha_bar_prev[i] = running;                // ᾱ_{t−1}, ᾱ_0 = 1
    running *= alphas[i];
    alpha_bar[i] = running;                     // ᾱ_t = ∏ α_s
    sqrt_alpha_bar[i] = std::sqrt(alpha_bar[i]);
    sqrt_one_minus_alpha_bar[i] = std::sqrt(1.0 - alpha_bar[i]);
    // μ̃_t = coef1 · x_0 + coef2 · x_t,  β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)     (DDPM eq. 7)
    const PosteriorCoefficients posterior = posterior_coefficients(alpha_bar[i], alpha_bar_prev[i]);
    posterior_variance[i] = posterior.variance;
    posterior_mean_coef1[i] = posterior.x0_coef;
    posterior_mean_coef2[i] = posterior.xt_coef;
    snr[i] = alpha_bar[i] / (1.0 - alpha_bar[i]);  // SNR(t) = ᾱ_t / (1 − ᾱ_t)
  }
  for (size_t i = 0; i < T; ++i) {
    const double v = (i == 0 && T > 1) ? posterior_variance[1] : posterior_variance[i];
    posterior_log_variance_clipped[i] = std::log(v > 0.0 ? v : betas[i]);
  }
}

torch::Tensor NoiseSchedule::tensor(const std::vector<double>& table, torch::Device device) {
  return torch::tensor(table, torch::dtype(torch::kFloat64)).to(device);
}

}  // namespace diffuse
