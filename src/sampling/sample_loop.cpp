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

torch::Tensor generate_images(const GaussianDiffusion& diffusion, Sampler& sampler, const Denoiser& denoiser,
                              int64_t n, int64_t batch_size, const std::vector<int64_t>& image_shape,
                              const SampleOptions& options, const torch::Generator& gen,
                              const BatchStepCallback& callback) {
  TORCH_CHECK(n > 0 && batch_size > 0, "generate_images: n and batch size must be positive");
  std::vector<torch::Tensor> images;
  for (int64_t start = 0; start < n; start += batch_size) {
    std::vector<int64_t> shape{std::min(batch_size, n - start)};
    shape.insert(shape.end(), image_shape.begin(), image_shape.end());
    auto x_T = torch::randn(shape, gen).to(diffusion.device());  // x_T ~ N(0, I)
    StepCallback cb;
    if (callback) cb = [&](const SampleStep& s) { callback(start, s); };
    images.push_back(sample_loop(diffusion, sampler, denoiser, x_T, options, gen, cb).to(torch::kCPU));
  }
  return torch::cat(images);
}

}  // namespace diffuse
