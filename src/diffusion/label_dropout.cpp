#include "diffuse/diffusion/label_dropout.h"

#include <stdexcept>
#include <string>

#include "diffuse/runtime/device.h"

namespace diffuse {

namespace {

// u < p for each of n rows, u ~ U[0, 1) drawn on the CPU generator and copied without a host wait
torch::Tensor dropped_rows(int64_t n, double p, torch::Device device) {
  if (!(p >= 0.0 && p <= 1.0)) throw std::invalid_argument("label dropout must be in [0, 1], got " + std::to_string(p));
  return to_device_async(torch::rand({n}, torch::dtype(torch::kFloat32)), device) < p;
}

}  // namespace

torch::Tensor drop_condition_rows(const torch::Tensor& conditions, const torch::Tensor& null_rows, double p) {
  TORCH_CHECK(conditions.sizes() == null_rows.sizes(), "drop_condition_rows: ", conditions.sizes(), " and ",
              null_rows.sizes());
  if (p == 0.0) return conditions;
  const auto drop = dropped_rows(conditions.size(0), p, conditions.device());
  std::vector<int64_t> shape(conditions.dim(), 1);
  shape[0] = conditions.size(0);
  return torch::where(drop.view(shape), null_rows, conditions);
}

torch::Tensor drop_labels(const torch::Tensor& labels, int64_t null_label, double p) {
  if (!(p >= 0.0 && p <= 1.0)) throw std::invalid_argument("label dropout must be in [0, 1], got " + std::to_string(p));
  if (p == 0.0) return labels;
  const auto drop = dropped_rows(labels.numel(), p, labels.device()).view(labels.sizes());  // ∅ where u < p
  return torch::where(drop, torch::full_like(labels, null_label), labels);
}

}  // namespace diffuse
