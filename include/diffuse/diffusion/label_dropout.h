// Label (and caption) dropout for classifier-free guidance (Ho & Salimans 2022): in training each label is
// replaced by the "no label" class ∅ with probability p, so that one network learns both
// ε_θ(x_t, t, y) and ε_θ(x_t, t, ∅) (the guided sampler is sampling/guidance.h).
#pragma once

#include <torch/torch.h>

namespace diffuse {

// Each label replaced by `null_label` with probability p (drawn from the global generator).
torch::Tensor drop_labels(const torch::Tensor& labels, int64_t null_label, double p);
// Each row of `conditions` [B, …] (a prompt's ids) replaced by the same row of `null_rows` with
// probability p: caption dropout to the empty prompt.
torch::Tensor drop_condition_rows(const torch::Tensor& conditions, const torch::Tensor& null_rows, double p);

}  // namespace diffuse
