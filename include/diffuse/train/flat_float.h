// The test the one-pass AdamW and EMA updates share: whether float32 CPU tensors lie element for
// element in the same dense memory, so that one flat loop over data_ptr<float>() walks them all
// (NCHW or channels-last alike).
#pragma once

#include <torch/torch.h>

#include <initializer_list>

namespace diffuse {

inline bool flat_float_cpu(const torch::Tensor& p, std::initializer_list<torch::Tensor> partners) {
  if (!p.device().is_cpu() || p.scalar_type() != torch::kFloat32 || !p.is_non_overlapping_and_dense()) return false;
  for (const auto& t : partners) {
    if (!t.device().is_cpu() || t.scalar_type() != torch::kFloat32 || t.strides() != p.strides()) return false;
  }
  return true;
}

}  // namespace diffuse
