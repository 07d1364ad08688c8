#include "diffuse/edit/mix.h"

#include <stdexcept>

namespace diffuse {

std::vector<double> mixture_weights(int64_t frames) {
  if (frames < 1) throw std::invalid_argument("mixtures: frames must be >= 1, got " + std::to_string(frames));
  std::vector<double> lambdas;
  for (int64_t k = 0; k < frames; ++k) {
    lambdas.push_back(frames == 1 ? 0.5 : static_cast<double>(k) / static_cast<double>(frames - 1));
  }
  return lambdas;
}

torch::Tensor denoise_mixtures(const GaussianDiffusion& diffusion, Sampler& sampler, const Denoiser& denoiser,
                               const torch::Tensor& a, const torch::Tensor& b, int64_t frames, int64_t t,
                               int64_t steps, bool clip_x0, const torch::Generator& gen) {
  std::vector<torch::Tensor> mixtures;
  for (double lambda : mixture_weights(frames)) mixtures.push_back((1 - lambda) * a + lambda * b);  // (1 − λ) a + λ b
  const auto x0 = torch::stack(mixtures);
  // one ε of one image's shape, broadcast over the frames
  const auto eps = torch::randn({1, x0.size(1), x0.size(2), x0.size(3)}, gen);
  return noise_and_denoise(diffusion, sampler, denoiser, x0, t, steps, clip_x0, gen, eps).result;
}

}  // namespace diffuse
