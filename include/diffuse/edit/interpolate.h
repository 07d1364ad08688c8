// Interpolating between two latents. x_T is N(0, I): its norm concentrates near √d, and the
// straight line between two such points passes through much shorter vectors that the model never
// saw as x_T. Spherical interpolation keeps the norm:
//   slerp(a, b; λ) = sin((1 − λ)θ)/sin θ · a + sin(λθ)/sin θ · b,   cos θ = ⟨a, b⟩/(|a||b|)
#pragma once

#include <torch/torch.h>

namespace diffuse {

// a, b: [C, H, W] (or any shape, same for both); returns the interpolant at λ ∈ [0, 1].
torch::Tensor slerp(const torch::Tensor& a, const torch::Tensor& b, double lambda);

}  // namespace diffuse
