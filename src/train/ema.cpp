#include "diffuse/train/ema.h"

#include <algorithm>

#include "diffuse/train/flat_float.h"
#include "diffuse/train/power_ema.h"
#include "diffuse/util/target_clones.h"

namespace diffuse {

namespace {

// θ_ema ← d θ_ema + (1 − d) θ over n elements, vectorised for the widest unit this CPU has.
DIFFUSE_TARGET_CLONES void ema_elements(float* ema, const float* now, float d, int64_t n) {
  const float rest = 1.0f - d;
  for (int64_t k = 0; k < n; ++k) ema[k] = ema[k] * d + rest * now[k];
}

}  // namespace

Ema Ema::power(double gamma) {
  power_ema_sigma_rel(gamma);  // refuses a negative or non-finite γ
  Ema ema(0.0);
  ema.gamma_ = gamma;
  return ema;
}

double Ema::current_decay() const {
  if (is_power()) return power_ema_decay(gamma_, updates_ + 1);
  const double k = static_cast<double>(updates_);
  return std::min(decay_, (1.0 + k) / (10.0 + k));
}

void Ema::update(torch::nn::Module& averaged, const torch::nn::Module& model) {
  torch::NoGradGuard no_grad;
  const double d = current_decay();
  auto avg = averaged.parameters();
  const auto cur = model.parameters();
  TORCH_CHECK(avg.size() == cur.size(), "Ema::update: models differ");
  // float32 CPU weights in one pass over all of them (memory-bound there); the rest with
  // multi-tensor kernels
  std::vector<std::pair<float*, const float*>> flat;  // (θ_ema, θ)
  std::vector<int64_t> flat_sizes;
  std::vector<torch::Tensor> rest_avg, rest_cur;
  for (size_t i = 0; i < avg.size(); ++i) {
    if (flat_float_cpu(avg[i], {cur[i]})) {
      flat.emplace_back(avg[i].data_ptr<float>(), cur[i].data_ptr<float>());
      flat_sizes.push_back(avg[i].numel());
    } else {
      rest_avg.push_back(avg[i]);
      rest_cur.push_back(cur[i]);
    }
  }
  parallel_over_chunks(element_chunks(flat_sizes), [&](size_t, const ElementChunk& c) {
    auto [ema, now] = flat[c.tensor];
    ema_elements(ema + c.begin, now + c.begin, static_cast<float>(d), c.end - c.begin);
  });
  if (!rest_avg.empty()) {
    at::_foreach_mul_(rest_avg, d);
    at::_foreach_add_(rest_avg, rest_cur, 1.0 - d);  // θ_ema ← d θ_ema + (1 − d) θ
  }
  ++updates_;
}

}  // namespace diffuse
