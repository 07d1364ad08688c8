// The Fréchet distance between two Gaussians fitted to feature sets (the formula behind FID):
//   d² = ‖μ₁ − μ₂‖² + Tr(Σ₁) + Tr(Σ₂) − 2 Tr((Σ₁^{½} Σ₂ Σ₁^{½})^{½})
// Matrix square roots through a symmetric eigendecomposition, in float64.
#pragma once

#include <torch/torch.h>

namespace diffuse {

struct GaussianStats {
  torch::Tensor mean;  // [D] float64
  torch::Tensor cov;   // [D, D] float64, unbiased (divides by N − 1)
};

GaussianStats feature_statistics(const torch::Tensor& features);  // [N, D], N ≥ 2

// √S of a symmetric positive semi-definite matrix: V diag(√max(λ, 0)) Vᵀ.
torch::Tensor sqrtm_psd(const torch::Tensor& s);

double frechet_distance(const GaussianStats& a, const GaussianStats& b);

// Entropy (nats) of the histogram of arg-max classes in logits [N, K]: log K when every class
// is predicted equally often, 0 when one class takes all (mode collapse).
double predicted_class_entropy(const torch::Tensor& logits);

}  // namespace diffuse
