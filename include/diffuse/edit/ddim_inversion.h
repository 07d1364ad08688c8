// DDIM inversion: the η = 0 update is a discretised ODE, so it can be run forwards in time,
// from an image x_0 to a latent x_T that DDIM decodes back to (nearly) the same image:
//   x_next = √ᾱ_next x̂_0(x_t, t) + √(1 − ᾱ_next) ε̂(x_t, t)        (t < t_next on the grid)
// The step uses the prediction at the *current* (lower) t, the usual approximation
// ε̂(x_next, t_next) ≈ ε̂(x_t, t); its error shrinks with the step size.
#pragma once

#include <torch/torch.h>

#include "diffuse/sampling/sample_loop.h"

namespace diffuse {

// x_0 → x at the grid's largest timestep; `steps` and `spacing` as for DdimSampler. x̂_0 is not
// clipped (clipping would make the map non-invertible).
torch::Tensor ddim_invert(const GaussianDiffusion& diffusion, const Denoiser& denoiser, const torch::Tensor& x0,
                          int64_t steps, TimestepSpacing spacing);

// Decodes a latent from ddim_invert with DDIM η = 0 on the same grid, x̂_0 unclipped.
torch::Tensor ddim_decode(const GaussianDiffusion& diffusion, const Denoiser& denoiser, const torch::Tensor& x_T,
                          int64_t steps, TimestepSpacing spacing);

}  // namespace diffuse
