#include "diffuse/edit/ddim_inversion.h"

#include <cmath>

#include "diffuse/sampling/ddim.h"

namespace diffuse {

torch::Tensor ddim_invert(const GaussianDiffusion& diffusion, const Denoiser& denoiser, const torch::Tensor& x0,
                          int64_t steps, TimestepSpacing spacing) {
  torch::NoGradGuard no_grad;
  DdimSampler grid(diffusion.schedule(), spacing, 0.0);
  auto ts = grid.timesteps(steps);  // descending
  std::reverse(ts.begin(), ts.end());
  const Predictor predict = make_predictor(diffusion, denoiser, /*clip_x0=*/false);
  // First step, from the clean image (ᾱ = 1, where decoding ends) to the smallest grid timestep
  // t₀ (0 for leading spacing, T/S − 1 for trailing): x̂_0 is the image itself, and ε̂ is the one
  // prediction there is, the network's at the image with t₀'s label.
  const double ab_first = diffusion.schedule().alpha_bar_at(ts.front());
  auto x = std::sqrt(ab_first) * x0 + std::sqrt(1.0 - ab_first) * predict(x0, ts.front()).eps;
  for (size_t i = 0; i + 1 < ts.size(); ++i) {
    const int64_t t = ts[i], t_next = ts[i + 1];
    const auto pred = predict(x, t);
    const double ab_next = diffusion.schedule().alpha_bar_at(t_next);
    x = std::sqrt(ab_next) * pred.x0 + std::sqrt(1.0 - ab_next) * pred.eps;
  }
  return x;
}

torch::Tensor ddim_decode(const GaussianDiffusion& diffusion, const Denoiser& denoiser, const torch::Tensor& x_T,
                          int64_t steps, TimestepSpacing spacing) {
  DdimSampler sampler(diffusion.schedule(), spacing, 0.0);
  SampleOptions options;
  options.steps = steps;
  options.clip_x0 = false;  // x_T sits at the first timestep of the full grid (start_t = −1)
  return sample_loop(diffusion, sampler, denoiser, x_T, options, c10::nullopt);
}

}  // namespace diffuse
