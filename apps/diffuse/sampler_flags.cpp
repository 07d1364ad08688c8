// The sampler flags shared by `diffuse sample` and `diffuse eval --metric fid`.
#include "commands.h"

namespace diffuse::cli {

void add_sampler_options(CLI::App& cmd, SamplerFlags& f) {
  cmd.add_option("--sampler", f.sampler, "Sampler")->check(CLI::IsMember(sampler_names()))->capture_default_str();
  cmd.add_option("--steps", f.steps, "Sampling steps S (default: T for ddpm, 50 for the others)")->check(non_negative_number());
  cmd.add_option("--eta", f.eta, "DDIM eta (0: deterministic, 1: DDPM-like)")
      ->check(eta_range())
      ->capture_default_str();
  cmd.add_option("--spacing", f.spacing, "Timestep spacing when S < T (default: the checkpoint's, else leading)")
      ->check(CLI::IsMember(timestep_spacing_names()));
  cmd.add_option("--ddpm-variance", f.ddpm_variance,
                 "DDPM sigma^2: posterior (beta-tilde) or beta (default: the checkpoint's, else posterior)")
      ->check(CLI::IsMember({"posterior", "beta"}));
  cmd.add_flag("--no-clip", f.no_clip, "Do not clamp x0_pred to [-1, 1]");
}

SamplerConfig sampler_config_of(const SamplerFlags& f, const SamplingDefaults& defaults) {
  SamplerConfig config;
  config.name = f.sampler;
  config.spacing = f.spacing.empty() ? defaults.spacing : timestep_spacing_from_string(f.spacing);
  if (f.eta != 0.0 && f.sampler != "ddim") throw std::runtime_error("--eta applies to --sampler ddim only");
  config.eta = f.eta;
  config.ddpm_large_variance = f.ddpm_variance.empty() ? defaults.ddpm_large_variance : f.ddpm_variance == "beta";
  return config;
}

bool clip_x0_of(const SamplerFlags& f, const SamplingDefaults& defaults) { return defaults.clip_x0 && !f.no_clip; }

std::unique_ptr<Sampler> make_sampler_from_flags(const SamplerFlags& f, const Pipeline& pipeline, int64_t& steps) {
  const SamplerConfig config = sampler_config_of(f, pipeline.info().sampling);
  steps = sampling_steps(f.sampler, f.steps, pipeline.diffusion.timesteps());
  return make_sampler(config, pipeline.diffusion.schedule());
}

}  // namespace diffuse::cli
