// The two densities the ELBO needs, elementwise, in nats.
#pragma once

#include <torch/torch.h>

namespace diffuse {

// KL(N(μ₁, e^{ℓ₁}) ‖ N(μ₂, e^{ℓ₂})) = ½ (−1 + ℓ₂ − ℓ₁ + e^{ℓ₁ − ℓ₂} + (μ₁ − μ₂)² e^{−ℓ₂})
// for diagonal Gaussians given by means and log-variances; broadcasts.
torch::Tensor normal_kl(const torch::Tensor& mean1, const torch::Tensor& logvar1, const torch::Tensor& mean2,
                        const torch::Tensor& logvar2);

// Φ(x) = ½ (1 + erf(x/√2)), the standard normal CDF.
torch::Tensor standard_normal_cdf(const torch::Tensor& x);

// log p(x) of 8-bit data x ∈ {−1, −1 + 2/255, …, 1} under N(mean, e^{2·log_scale}) integrated
// over each pixel's bin [x − 1/255, x + 1/255], with the outer bins open to ∓∞ (DDPM §3.3):
//   x = −1: log Φ((x + 1/255 − μ)/σ);  x = 1: log(1 − Φ((x − 1/255 − μ)/σ));  else log of the difference.
torch::Tensor discretized_gaussian_log_likelihood(const torch::Tensor& x, const torch::Tensor& mean,
                                                  const torch::Tensor& log_scale);

}  // namespace diffuse
