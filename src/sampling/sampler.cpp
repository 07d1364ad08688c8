#include "diffuse/sampling/sampler.h"

#include <stdexcept>

#include "diffuse/sampling/ddim.h"
#include "diffuse/sampling/ddpm.h"

namespace diffuse {

std::vector<std::string> sampler_names() { return {"ddpm", "ddim"}; }

std::unique_ptr<Sampler> make_sampler(const SamplerConfig& config, const NoiseSchedule& schedule) {
  if (config.name == "ddpm") return std::make_unique<DdpmSampler>(schedule, config.spacing, config.ddpm_large_variance);
  if (config.name == "ddim") {
    if (!(config.eta >= 0.0)) throw std::invalid_argument("ddim: eta must be >= 0, got " + std::to_string(config.eta));
    return std::make_unique<DdimSampler>(schedule, config.spacing, config.eta);
  }
  throw std::invalid_argument("unknown sampler '" + config.name + "' (expected ddpm or ddim)");
}

torch::Tensor randn_like_from(const torch::Tensor& like, const c10::optional<torch::Generator>& gen) {
  if (!gen.has_value()) return torch::randn_like(like);
  auto noise = torch::randn(like.sizes(), gen, torch::dtype(like.scalar_type()).device(gen->device()));
  return noise.to(like.device());
}

}  // namespace diffuse
