#include "diffuse/eval/frechet.h"

#include <cmath>

namespace diffuse {

GaussianStats feature_statistics(const torch::Tensor& features) {
  TORCH_CHECK(features.dim() == 2 && features.size(0) >= 2, "feature_statistics: need [N >= 2, D], got ",
              features.sizes());
  auto f = features.to(torch::kCPU, torch::kFloat64);
  GaussianStats s;
  s.mean = f.mean(0);
  auto centered = f - s.mean;
  s.cov = centered.t().matmul(centered) / static_cast<double>(f.size(0) - 1);  // Σ = XᵀX/(N − 1)
  return s;
}

torch::Tensor sqrtm_psd(const torch::Tensor& s) {
  auto sym = 0.5 * (s + s.t());  // remove rounding asymmetry before eigh
  auto [eigenvalues, eigenvectors] = at::linalg_eigh(sym, "L");
  return eigenvectors.matmul(torch::diag(eigenvalues.clamp_min(0.0).sqrt())).matmul(eigenvectors.t());
}

double frechet_distance(const GaussianStats& a, const GaussianStats& b) {
  const double mean_term = (a.mean - b.mean).pow(2).sum().item<double>();  // ‖μ₁ − μ₂‖²
  auto root_a = sqrtm_psd(a.cov);
  // Tr((Σ₁^{½} Σ₂ Σ₁^{½})^{½}): the inner product is symmetric PSD, so eigh applies again
  const double cross = sqrtm_psd(root_a.matmul(b.cov).matmul(root_a)).trace().item<double>();
  return mean_term + a.cov.trace().item<double>() + b.cov.trace().item<double>() - 2.0 * cross;
}

double predicted_class_entropy(const torch::Tensor& logits) {
  auto counts = torch::bincount(logits.argmax(1).to(torch::kCPU), /*weights=*/{}, logits.size(1)).to(torch::kFloat64);
  auto p = counts / counts.sum();
  auto nonzero = p.masked_select(p > 0);
  return -(nonzero * nonzero.log()).sum().item<double>();  // H = −Σ p log p
}

}  // namespace diffuse
