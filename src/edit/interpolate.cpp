#include "diffuse/edit/interpolate.h"

#include <cmath>

namespace diffuse {

torch::Tensor slerp(const torch::Tensor& a, const torch::Tensor& b, double lambda) {
  TORCH_CHECK(a.sizes() == b.sizes(), "slerp: shapes differ: ", a.sizes(), " vs ", b.sizes());
  const double cos_theta =
      (a * b).sum().item<double>() / (a.norm().item<double>() * b.norm().item<double>());
  const double theta = std::acos(std::clamp(cos_theta, -1.0, 1.0));
  if (std::sin(theta) < 1e-6) return (1.0 - lambda) * a + lambda * b;  // (anti)parallel: the line
  return (std::sin((1.0 - lambda) * theta) / std::sin(theta)) * a + (std::sin(lambda * theta) / std::sin(theta)) * b;
}

}  // namespace diffuse
