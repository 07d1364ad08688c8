// Whether an operation on these tensors must record itself for autograd: grad mode is on and one of
// them (undefined ones skipped) requires a gradient. The hand-written kernels (oneDNN convolutions
// and products, blocked conv_out, the CUDA GroupNorm) take their inference path otherwise.
#pragma once

#include <torch/torch.h>

#include <initializer_list>

namespace diffuse {

inline bool gradient_wanted(std::initializer_list<torch::Tensor> tensors) {
  if (!torch::GradMode::is_enabled()) return false;
  for (const auto& t : tensors) {
    if (t.defined() && t.requires_grad()) return true;
  }
  return false;
}

}  // namespace diffuse
