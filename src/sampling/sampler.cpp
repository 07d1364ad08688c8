#include "diffuse/sampling/sampler.h"

#include "diffuse/runtime/device.h"

#include <stdexcept>

#include "diffuse/sampling/ddim.h"
#include "diffuse/sampling/ddpm.h"
#include "diffuse/sampling/ode_solvers.h"

namespace diffuse {

std::vector<std::string> sampler_names() { return {"ddpm", "ddim", "euler", "heun", "dpm++2m"}; }

std::unique_ptr<Sampler> make_sampler(const SamplerConfig& config, const NoiseSchedule& schedule) {
  if (config.name == "ddpm") return std::make_unique<DdpmSampler>(schedule, config.spacing, config.ddpm_large_variance);
  if (config.name == "ddim") {
    if (!(config.eta >= 0.0)) throw std::invalid_argument("ddim: eta must be >= 0, got " + std::to_string(config.eta));
    return std::make_unique<DdimSampler>(schedule, config.spacing, config.eta);
  }
  if (config.name == "euler") return std::make_unique<EulerSampler>(schedule, config.spacing);
  if (config.name == "heun") return std::make_unique<HeunSampler>(schedule, config.spacing);
  if (config.name == "dpm++2m") return std::make_unique<DpmSolverPP2MSampler>(schedule, config.spacing);
  throw std::invalid_argument("unknown sampler '" + config.name + "' (expected ddpm, ddim, euler, heun or dpm++2m)");
}

int64_t sampling_steps(const std::string& sampler, int64_t requested, int64_t timesteps) {
  const int64_t steps = requested > 0 ? requested : (sampler == "ddpm" ? timesteps : 50);
  if (steps > timesteps) {
    throw std::invalid_argument("--steps " + std::to_string(steps) + " exceeds the checkpoint's T = " +
                                std::to_string(timesteps));
  }
  return steps;
}

std::vector<int64_t> Sampler::timesteps(int64_t steps, int64_t t_start) const {
  const int64_t T = schedule_.timesteps();
  if (t_start < -1 || t_start >= T) {
    throw std::invalid_argument("start timestep " + std::to_string(t_start) + " outside [0, " + std::to_string(T - 1) + "]");
  }
  return spaced_timesteps(t_start < 0 ? T : t_start + 1, steps, spacing_);
}

torch::Tensor randn_like_from(const torch::Tensor& like, const c10::optional<torch::Generator>& gen) {
  if (!gen.has_value()) return torch::randn_like(like);
  auto noise = torch::randn(like.sizes(), gen, torch::dtype(like.scalar_type()).device(gen->device()));
  return to_device_async(noise, like.device());
}

}  // namespace diffuse
