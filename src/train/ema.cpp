#include "diffuse/train/ema.h"

#include "diffuse/train/flat_float.h"

#include <ATen/Parallel.h>

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
  // float32 CPU weights in one pass each (memory-bound there); the rest with multi-tensor kernels
  std::vector<torch::Tensor> rest_avg, rest_cur;
  for (size_t i = 0; i < avg.size(); ++i) {
    auto& a = avg[i];
    const auto& c = cur[i];
    if (flat_float_cpu(a, {c})) {
      float* ema = a.data_ptr<float>();
      const float* now = c.data_ptr<float>();
      const float df = static_cast<float>(d), rest = static_cast<float>(1.0 - d);
      at::parallel_for(0, a.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
        for (int64_t k = begin; k < end; ++k) ema[k] = ema[k] * df + rest * now[k];
      });
    } else {
      rest_avg.push_back(a);
      rest_cur.push_back(c);
    }
  }
  if (!rest_avg.empty()) {
    at::_foreach_mul_(rest_avg, d);
    at::_foreach_add_(rest_avg, rest_cur, 1.0 - d);  // θ_ema ← d θ_ema + (1 − d) θ
  }
  ++updates_;
}

}  // namespace diffuse
