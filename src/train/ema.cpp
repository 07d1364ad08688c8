#include "diffuse/train/ema.h"

#include <algorithm>

namespace diffuse {

double Ema::current_decay() const {
  const double k = static_cast<double>(updates_);
  return std::min(decay_, (1.0 + k) / (10.0 + k));
}

void Ema::update(torch::nn::Module& averaged, const torch::nn::Module& model) {
  torch::NoGradGuard no_grad;
  const double d = current_decay();
  auto avg = averaged.parameters();
  const auto cur = model.parameters();
  TORCH_CHECK(avg.size() == cur.size(), "Ema::update: models differ");
  at::_foreach_mul_(avg, d);
  at::_foreach_add_(avg, cur, 1.0 - d);  // θ_ema ← d θ_ema + (1 − d) θ   (multi-tensor kernels)
  ++updates_;
}

}  // namespace diffuse
