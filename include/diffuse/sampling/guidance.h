// Class and text conditioning and classifier-free guidance (Ho & Salimans 2022).
//
// One network learns ε_θ(x_t, t, y) and ε_θ(x_t, t, ∅): during training each condition is replaced
// by ∅ (the "no label" class num_classes, or the empty prompt) with probability p
// (diffusion/label_dropout.h). At sampling time
//   ε̃ = (1 + w) ε_θ(x_t, t, y) − w ε_θ(x_t, t, ∅)
// with guidance weight w ≥ 0 (w = 0: plain conditional sampling). A negative prompt n takes ∅'s
// place: ε̃ = (1 + w) ε_θ(x_t, t, y) − w ε_θ(x_t, t, n).
#pragma once

#include <torch/torch.h>

#include <functional>

#include "diffuse/sampling/sample_loop.h"

namespace diffuse {

// The guided network: one batched call on [x; x] with conditions [y; ∅], then
// (1 + w)·cond − w·uncond. With w = 0 it is the conditional network, called once.
// null_row: ∅ for one image (a label [], or a prompt's ids [L]), repeated for the batch.
ConditionalDenoiser classifier_free_guidance(ConditionalDenoiser net, torch::Tensor null_row, double w);
ConditionalDenoiser classifier_free_guidance(ConditionalDenoiser net, int64_t null_label, double w);

// Labels for a grid with one row per class: image i gets class ⌊i / per_row⌋ where per_row =
// ⌈n / classes⌉ is also the grid's width.
struct ClassRows {
  torch::Tensor labels;  // [n] int64
  int64_t per_row;
};
ClassRows class_rows(int64_t n, int64_t classes);

}  // namespace diffuse
