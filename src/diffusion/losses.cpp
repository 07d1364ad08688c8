#include "diffuse/diffusion/losses.h"

#include <cmath>

namespace diffuse {

torch::Tensor normal_kl(const torch::Tensor& mean1, const torch::Tensor& logvar1, const torch::Tensor& mean2,
                        const torch::Tensor& logvar2) {
  // ½ (−1 + ℓ₂ − ℓ₁ + e^{ℓ₁ − ℓ₂} + (μ₁ − μ₂)² e^{−ℓ₂})
  return 0.5 * (-1.0 + logvar2 - logvar1 + torch::exp(logvar1 - logvar2) + (mean1 - mean2).pow(2) * torch::exp(-logvar2));
}

torch::Tensor standard_normal_cdf(const torch::Tensor& x) { return 0.5 * (1.0 + torch::erf(x / std::sqrt(2.0))); }

torch::Tensor discretized_gaussian_log_likelihood(const torch::Tensor& x, const torch::Tensor& mean,
                                                  const torch::Tensor& log_scale) {
  constexpr double half_bin = 1.0 / 255.0;
  constexpr double tiny = 1e-12;
  const auto centered = x - mean;
  const auto inv_stdv = torch::exp(-log_scale);
  const auto cdf_plus = standard_normal_cdf(inv_stdv * (centered + half_bin));  // Φ((x + 1/255 − μ)/σ)
  const auto cdf_min = standard_normal_cdf(inv_stdv * (centered - half_bin));   // Φ((x − 1/255 − μ)/σ)
  const auto log_cdf_plus = torch::log(cdf_plus.clamp_min(tiny));
  const auto log_one_minus_cdf_min = torch::log((1.0 - cdf_min).clamp_min(tiny));
  const auto log_cdf_delta = torch::log((cdf_plus - cdf_min).clamp_min(tiny));
  return torch::where(x < -0.999, log_cdf_plus, torch::where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta));
}

}  // namespace diffuse
