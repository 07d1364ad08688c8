// Editing by noising and denoising (SDEdit, Meng et al. 2022): a real image x_0 is pushed to
//   x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε                      (q(x_t|x_0), the closed form)
// and the reverse process runs from t back to 0. Small t keeps the image; large t keeps only
// what the model infers from what survived the noise.
#pragma once

#include <torch/torch.h>

#include "diffuse/sampling/sample_loop.h"

namespace diffuse {

// x_0 [B, C, H, W] in [−1, 1] → noised to timestep t (0-based) → denoised with `sampler` over
// `steps` steps spaced on [0, t]. The noise level is the grid's first timestep: t itself for
// trailing and linspace spacing, a little below t for leading, about 0.8 t for quadratic. ε is drawn from `gen`, or given
// (`noise`, broadcast to x_0's shape: one ε for every image of the batch gives a comparison whose
// columns differ by x_0 alone, as `edit mix` draws them).
struct NoisedAndDenoised {
  int64_t t;             // the timestep x_t is at
  torch::Tensor x_t;
  torch::Tensor result;
};
NoisedAndDenoised noise_and_denoise(const GaussianDiffusion& diffusion, Sampler& sampler, const Denoiser& denoiser,
                                    const torch::Tensor& x0, int64_t t, int64_t steps, bool clip_x0,
                                    const torch::Generator& gen, const torch::Tensor& noise = {});

// The 0-based timestep for an edit strength s in (0, 1]: t = round(s · T) − 1.
int64_t timestep_for_strength(double strength, int64_t T);

// Peak signal-to-noise ratio per image of a and b in [−1, 1]: 10 log10(2² / MSE) dB.
torch::Tensor psnr(const torch::Tensor& a, const torch::Tensor& b);
// The same over a region [B or 1, 1, H, W] (1 where a pixel counts, e.g. an inpainting hole): the
// MSE of the region's pixels in every channel.
torch::Tensor psnr(const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& region);

}  // namespace diffuse
