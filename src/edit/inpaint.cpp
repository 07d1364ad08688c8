#include "diffuse/edit/inpaint.h"

#include <cmath>
#include <stdexcept>

namespace diffuse {

torch::Tensor inpaint(const GaussianDiffusion& diffusion, Sampler& sampler, const Denoiser& denoiser,
                      const torch::Tensor& x0, const torch::Tensor& known, const InpaintOptions& options,
                      const torch::Generator& gen) {
  if (known.dim() != 4 || known.size(2) != x0.size(2) || known.size(3) != x0.size(3)) {
    throw std::invalid_argument("inpaint: the mask must be " + std::to_string(x0.size(2)) + "×" +
                                std::to_string(x0.size(3)) + " like the image");
  }
  if (options.resample < 0) throw std::invalid_argument("inpaint: resample must be >= 0");
  torch::NoGradGuard no_grad;
  const auto& schedule = diffusion.schedule();
  auto m = known.to(x0.dtype());
  // x at the known pixels: the original noised to t (the clean original at t = −1)
  auto noised_original = [&](int64_t t) {
    if (t < 0) return x0;
    auto t_batch = torch::full({x0.size(0)}, t, torch::dtype(torch::kLong).device(x0.device()));
    return diffusion.q_sample(x0, t_batch, randn_like_from(x0, gen));
  };
  const Predictor predict = make_predictor(diffusion, denoiser, options.clip_x0);
  sampler.reset();
  const auto ts = sampler.timesteps(options.steps);
  auto x = randn_like_from(x0, gen);  // x_T ~ N(0, I)
  for (size_t i = 0; i < ts.size(); ++i) {
    const int64_t t = ts[i], t_prev = i + 1 < ts.size() ? ts[i + 1] : -1;
    for (int64_t round = 0; round <= options.resample; ++round) {
      auto x_prev = sampler.step(predict(x, t), t, t_prev, x, gen, predict).x_prev;
      x_prev = m * noised_original(t_prev) + (1 - m) * x_prev;
      if (round == options.resample || t_prev < 0) {
        x = x_prev;
        break;
      }
      // back to t: x_t ~ N(√(ᾱ_t/ᾱ_prev) x_prev, (1 − ᾱ_t/ᾱ_prev) I)
      const double ratio = schedule.alpha_bar_at(t) / schedule.alpha_bar_at(t_prev);
      x = std::sqrt(ratio) * x_prev + std::sqrt(1.0 - ratio) * randn_like_from(x_prev, gen);
      sampler.reset();  // a multistep solver's history no longer matches
    }
  }
  return x;
}

}  // namespace diffuse
