// Autograd helpers of the hand-written kernels (oneDNN convolutions and products, blocked
// conv_out, the fused GroupNorm kernels).
//
// gradient_wanted: whether an operation on these tensors must record itself for autograd: grad mode
// is on and one of them (undefined ones skipped) requires a gradient. The kernels take their
// inference path otherwise.
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

// An incoming gradient as a hand-written backward kernel reads it: in the dtype and the memory
// format of the tensor it belongs with (LibTorch may hand it over strided, or in float32 from a
// consumer that computed in float32).
inline torch::Tensor gradient_like(const torch::Tensor& like, const torch::Tensor& grad) {
  return grad.to(like.scalar_type()).contiguous(like.suggest_memory_format());
}

}  // namespace diffuse
