// Inpainting with an unconditional model (Lugmayr et al. 2022, RePaint): at every step the known
// pixels are replaced by the original noised to the same level, so the model only fills the
// hole, in agreement with what surrounds it:
//   x_prev = m ⊙ q_sample(x_0, t_prev) + (1 − m) ⊙ step(x_t)        (m = 1 where known)
// Resampling (RePaint's "jumps" of one step): after a step, go back to t with the forward
// transition q(x_t|x_prev) = N(√(ᾱ_t/ᾱ_prev) x_prev, (1 − ᾱ_t/ᾱ_prev) I) and step again, r times,
// which lets the hole and the known region harmonise.
#pragma once

#include <torch/torch.h>

#include "diffuse/sampling/sample_loop.h"

namespace diffuse {

struct InpaintOptions {
  int64_t steps = 50;
  int64_t resample = 0;  // extra go-back-and-step rounds per step (RePaint r − 1)
  bool clip_x0 = true;
};

// x0 [B, C, H, W] in [−1, 1]; known [B or 1, 1 or C, H, W] with 1 where pixels are kept.
torch::Tensor inpaint(const GaussianDiffusion& diffusion, Sampler& sampler, const Denoiser& denoiser,
                      const torch::Tensor& x0, const torch::Tensor& known, const InpaintOptions& options,
                      const torch::Generator& gen);

}  // namespace diffuse
