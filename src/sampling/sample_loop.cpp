#include "diffuse/sampling/sample_loop.h"

namespace diffuse {

torch::Tensor sample_loop(const GaussianDiffusion& diffusion, Sampler& sampler, const Denoiser& denoiser,
                          torch::Tensor x_T, const SampleOptions& options,
                          const c10::optional<torch::Generator>& gen, const StepCallback& callback) {
  torch::NoGradGuard no_grad;
  sampler.reset();
  const auto timesteps = sampler.timesteps(options.steps);
  const int64_t S = static_cast<int64_t>(timesteps.size());
  auto x = std::move(x_T);
  for (int64_t i = 0; i < S; ++i) {
    const int64_t t = timesteps[i];
    const int64_t t_prev = i + 1 < S ? timesteps[i + 1] : -1;
    auto t_batch = torch::full({x.size(0)}, t, torch::dtype(torch::kLong).device(x.device()));
    auto pred = diffusion.split_model_output(denoiser(x, t_batch), x, t_batch, options.clip_x0);
    auto out = sampler.step(pred, t, t_prev, x, gen);
    if (callback) callback(SampleStep{i, S, t, x, out.x0_pred});
    x = std::move(out.x_prev);
  }
  return x;
}

}  // namespace diffuse
