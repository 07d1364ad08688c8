// DDIM inversion: the η = 0 update is a discretised ODE, so it can be run forwards in time,
// from an image x_0 to a latent x_T that DDIM decodes back to (nearly) the same image:
//   x_next = √ᾱ_next x̂_0(x_t, t) + √(1 − ᾱ_next) ε̂(x_t, t)        (t < t_next on the grid)
// The step uses the prediction at the *current* (lower) t, the usual approximation
// ε̂(x_next, t_next) ≈ ε̂(x_t, t); its error shrinks with the step size. The first step starts
// from the clean image (ᾱ = 1, where decoding ends) and reaches the grid's smallest timestep t₀
// with ε̂(x_0, t₀): t₀ is 0 for leading spacing but T/S − 1 for trailing (ᾱ = 0.98 at S = 50),
// where taking the image for x_t₀ put the latent twice as far off the exact flow (test_edit.cpp).
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
