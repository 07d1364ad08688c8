#include "diffuse/sampling/sample_loop.h"

#include "diffuse/runtime/device.h"
#include "diffuse/util/cpu_sharing.h"

namespace diffuse {

Predictor make_predictor(const GaussianDiffusion& diffusion, const Denoiser& denoiser, bool clip_x0) {
  return [&diffusion, &denoiser, clip_x0](const torch::Tensor& x, int64_t t) {
    auto t_batch = torch::full({x.size(0)}, t, torch::dtype(torch::kLong).device(x.device()));
    return diffusion.split_model_output(denoiser(x, t_batch), x, t_batch, clip_x0);
  };
}

torch::Tensor sample_loop(const GaussianDiffusion& diffusion, Sampler& sampler, const Denoiser& denoiser,
                          torch::Tensor x_T, const SampleOptions& options,
                          const c10::optional<torch::Generator>& gen, const StepCallback& callback) {
  torch::NoGradGuard no_grad;
  sampler.reset();
  const auto timesteps = sampler.timesteps(options.steps, options.start_t);
  const int64_t S = static_cast<int64_t>(timesteps.size());
  const Predictor predict = make_predictor(diffusion, denoiser, options.clip_x0);
  auto x = std::move(x_T);
  for (int64_t i = 0; i < S; ++i) {
    const int64_t t = timesteps[i];
    const int64_t t_prev = i + 1 < S ? timesteps[i + 1] : -1;
    auto out = sampler.step(predict(x, t), t, t_prev, x, gen, predict);
    if (callback) callback(SampleStep{i, S, t, x, out.x0_pred});
    x = std::move(out.x_prev);
    if (!x.is_cuda()) {  // one thread per core that other processes leave free, looked at every few seconds
      const int threads = threads_for_load(torch::get_num_threads(), 2.0);
      if (threads != torch::get_num_threads()) torch::set_num_threads(threads);
    }
  }
  return x;
}

torch::Tensor generate_images(const GaussianDiffusion& diffusion, Sampler& sampler, const Denoiser& denoiser,
                              int64_t n, int64_t batch_size, const std::vector<int64_t>& image_shape,
                              const SampleOptions& options, const torch::Generator& gen,
                              const BatchStepCallback& callback) {
  ConditionalDenoiser net = [&](const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor&) {
    return denoiser(x, t);
  };
  return generate_images(diffusion, sampler, net, torch::Tensor(), n, batch_size, image_shape, options, gen, callback);
}

torch::Tensor generate_images(const GaussianDiffusion& diffusion, Sampler& sampler, const ConditionalDenoiser& denoiser,
                              const torch::Tensor& labels, int64_t n, int64_t batch_size,
                              const std::vector<int64_t>& image_shape, const SampleOptions& options,
                              const torch::Generator& gen, const BatchStepCallback& callback,
                              const BatchDoneCallback& on_batch) {
  TORCH_CHECK(n > 0 && batch_size > 0, "generate_images: n and batch size must be positive");
  TORCH_CHECK(!labels.defined() || (labels.dim() >= 1 && labels.size(0) == n), "generate_images: conditions ",
              labels.sizes(), " for ", n, " images");
  std::vector<torch::Tensor> images;
  for (int64_t start = 0; start < n; start += batch_size) {
    std::vector<int64_t> shape{std::min(batch_size, n - start)};
    shape.insert(shape.end(), image_shape.begin(), image_shape.end());
    auto x_T = to_device_async(torch::randn(shape, gen), diffusion.device());  // x_T ~ N(0, I)
    StepCallback cb;
    if (callback) cb = [&](const SampleStep& s) { callback(start, s); };
    torch::Tensor y;  // this batch's labels
    if (labels.defined()) y = labels.narrow(0, start, shape[0]).to(diffusion.device());
    Denoiser net = [&](const torch::Tensor& x, const torch::Tensor& t) { return denoiser(x, t, y); };
    auto batch = sample_loop(diffusion, sampler, net, x_T, options, gen, cb).to(torch::kCPU);
    if (on_batch) {
      on_batch(start, batch);
    } else {
      images.push_back(std::move(batch));
    }
  }
  return on_batch ? torch::Tensor() : torch::cat(images);
}

}  // namespace diffuse
