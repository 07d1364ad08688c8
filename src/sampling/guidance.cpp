#include "diffuse/sampling/guidance.h"

#include "diffuse/runtime/device.h"

#include <stdexcept>

namespace diffuse {

ConditionalDenoiser classifier_free_guidance(ConditionalDenoiser net, torch::Tensor null_row, double w) {
  if (!(w >= 0.0)) throw std::invalid_argument("guidance weight must be >= 0, got " + std::to_string(w));
  if (w == 0.0) return net;
  const int64_t null_label = null_row.dim() == 0 ? null_row.item<int64_t>() : 0;  // (read on the host, once)
  return [net = std::move(net), null_row = std::move(null_row), null_label, w](
             const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& y) {
    TORCH_CHECK(y.defined(), "classifier-free guidance needs a condition for every image");
    TORCH_CHECK(y.dim() == null_row.dim() + 1, "classifier-free guidance: conditions ", y.sizes(), " for ∅ ",
                null_row.sizes());
    const int64_t B = x.size(0);
    // ∅ made on y's device: a label by full_like, a row expanded (moved there once, before any
    // CUDA graph capture, by the caller; a copy from the host inside a capture would fail it)
    const auto null_rows = null_row.dim() == 0 ? torch::full_like(y, null_label)
                                               : null_row.to(y.device(), y.scalar_type()).unsqueeze(0).expand_as(y);
    auto out = net(torch::cat({x, x}), torch::cat({t, t}), torch::cat({y, null_rows}));
    auto cond = out.narrow(0, 0, B), uncond = out.narrow(0, B, B);
    return (1.0 + w) * cond - w * uncond;  // ε̃ = (1 + w) ε(x, y) − w ε(x, ∅)
  };
}

ConditionalDenoiser classifier_free_guidance(ConditionalDenoiser net, int64_t null_label, double w) {
  return classifier_free_guidance(std::move(net), torch::tensor(null_label, torch::kLong), w);
}

ClassRows class_rows(int64_t n, int64_t classes) {
  if (n < 1 || classes < 1) throw std::invalid_argument("class_rows: n and classes must be positive");
  const int64_t per_row = (n + classes - 1) / classes;
  // (integer division: "/" on integer tensors divides exactly and returns floats)
  return {torch::clamp_max(torch::div(torch::arange(n, torch::kLong), per_row, "floor"), classes - 1), per_row};
}

}  // namespace diffuse
