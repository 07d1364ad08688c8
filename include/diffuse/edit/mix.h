// What the model makes of a pixel mixture of two images (the notes' class-mixing experiment):
//   x_0(λ_k) = (1 − λ_k) a + λ_k b,  λ_k = k/(F − 1)  (k = 0..F−1; F = 1: λ = ½)
// all noised to t with one ε, so that the results differ by λ alone, then denoised from t.
#pragma once

#include "diffuse/edit/noise_and_denoise.h"

namespace diffuse {

// The mixture weights λ_k of F frames.
std::vector<double> mixture_weights(int64_t frames);

// a, b: [C, H, W] in [−1, 1] → the F denoised mixtures [F, C, H, W]; t 0-based.
torch::Tensor denoise_mixtures(const GaussianDiffusion& diffusion, Sampler& sampler, const Denoiser& denoiser,
                               const torch::Tensor& a, const torch::Tensor& b, int64_t frames, int64_t t,
                               int64_t steps, bool clip_x0, const torch::Generator& gen);

}  // namespace diffuse
