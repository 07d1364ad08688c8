#include "diffuse/edit/noise_and_denoise.h"

#include "diffuse/sampling/sampler.h"

#include <cmath>
#include <stdexcept>
#include <string>

namespace diffuse {

NoisedAndDenoised noise_and_denoise(const GaussianDiffusion& diffusion, Sampler& sampler, const Denoiser& denoiser,
                                    const torch::Tensor& x0, int64_t t, int64_t steps, bool clip_x0,
                                    const torch::Generator& gen, const torch::Tensor& noise) {
  const int64_t T = diffusion.timesteps();
  if (t < 0 || t >= T) throw std::invalid_argument("edit: t must be in [1, " + std::to_string(T) + "] (1-based)");
  if (steps < 1 || steps > t + 1) {
    throw std::invalid_argument("edit: steps must be in [1, " + std::to_string(t + 1) + "] to start at t = " +
                                std::to_string(t + 1));
  }
  const int64_t t_first = sampler.timesteps(steps, t).front();
  // a given ε must broadcast to x_0 (expand throws with LibTorch's message otherwise)
  const auto eps =
      noise.defined() ? noise.to(x0.device()).expand(x0.sizes()) : randn_like_from(x0, gen);
  auto t_batch = torch::full({x0.size(0)}, t_first, torch::dtype(torch::kLong).device(x0.device()));
  auto x_t = diffusion.q_sample(x0, t_batch, eps);  // x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε
  SampleOptions options;
  options.steps = steps;
  options.clip_x0 = clip_x0;
  options.start_t = t;
  auto result = sample_loop(diffusion, sampler, denoiser, x_t, options, gen);
  return {t_first, x_t, result};
}

int64_t timestep_for_strength(double strength, int64_t T) {
  if (!(strength > 0.0 && strength <= 1.0)) throw std::invalid_argument("--strength must be in (0, 1]");
  return std::max<int64_t>(1, std::llround(strength * static_cast<double>(T))) - 1;
}

torch::Tensor psnr(const torch::Tensor& a, const torch::Tensor& b) {
  auto mse = (a - b).to(torch::kDouble).pow(2).flatten(1).mean(1);
  return 10.0 * torch::log10(4.0 / mse.clamp_min(1e-20));  // peak-to-peak range 2
}

torch::Tensor psnr(const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& region) {
  TORCH_CHECK(a.sizes() == b.sizes() && a.dim() == 4 && region.dim() == 4 && region.size(1) == 1, "psnr: images ",
              a.sizes(), " and ", b.sizes(), ", region ", region.sizes());
  const auto r = region.to(a.device(), torch::kDouble).expand({a.size(0), 1, a.size(2), a.size(3)});
  const auto squared = ((a - b).to(torch::kDouble).pow(2) * r).flatten(1).sum(1);
  const auto mse = squared / (r.flatten(1).sum(1) * a.size(1)).clamp_min(1.0);
  return 10.0 * torch::log10(4.0 / mse.clamp_min(1e-20));
}

}  // namespace diffuse
