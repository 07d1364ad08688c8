#include "diffuse/diffusion/label_dropout.h"

#include <stdexcept>
#include <string>

#include "diffuse/runtime/device.h"

namespace diffuse {

torch::Tensor drop_labels(const torch::Tensor& labels, int64_t null_label, double p) {
  if (!(p >= 0.0 && p <= 1.0)) throw std::invalid_argument("label dropout must be in [0, 1], got " + std::to_string(p));
  if (p == 0.0) return labels;
  // ∅ where u < p, u ~ U[0, 1) drawn on the CPU generator and copied without a host wait
  auto drop = to_device_async(torch::rand(labels.sizes(), torch::dtype(torch::kFloat32)), labels.device()) < p;
  return torch::where(drop, torch::full_like(labels, null_label), labels);
}

}  // namespace diffuse
