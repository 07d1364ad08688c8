// diffuse schedule: the β schedule and its derived tables as CSV (t = 1..T, %.17g), or with
// --sampler the 0-based timesteps a sampler visits, on one line.
#include <cstdio>
#include <memory>

#include "commands.h"
#include "diffuse/sampling/sampler.h"

namespace diffuse::cli {

namespace {
struct ScheduleOptions {
  std::string schedule = "linear";
  int64_t timesteps = 1000;
  double beta_start = 1e-4, beta_end = 0.02;
  std::string sampler;
  int64_t steps = 50;
  std::string spacing = "leading";
};

void run_schedule(const ScheduleOptions& o) {
  ScheduleConfig config;
  config.kind = beta_schedule_from_string(o.schedule);
  config.timesteps = o.timesteps;
  config.beta_start = o.beta_start;
  config.beta_end = o.beta_end;
  const NoiseSchedule s(config);
  if (!o.sampler.empty()) {
    SamplerConfig sc;
    sc.name = o.sampler;
    sc.spacing = timestep_spacing_from_string(o.spacing);
    const auto ts = make_sampler(sc, s)->timesteps(o.steps);
    for (size_t i = 0; i < ts.size(); ++i) std::printf("%s%lld", i ? "," : "", static_cast<long long>(ts[i]));
    std::printf("\n");
    return;
  }
  std::printf("t,beta,alpha,alpha_bar,posterior_variance,posterior_mean_coef1,posterior_mean_coef2,snr\n");
  for (int64_t i = 0; i < s.timesteps(); ++i) {
    std::printf("%lld,%.17g,%.17g,%.17g,%.17g,%.17g,%.17g,%.17g\n", static_cast<long long>(i + 1), s.betas[i],
                s.alphas[i], s.alpha_bar[i], s.posterior_variance[i], s.posterior_mean_coef1[i],
                s.posterior_mean_coef2[i], s.snr[i]);
  }
}
}  // namespace

void add_schedule_command(CLI::App& app) {
  auto o = std::make_shared<ScheduleOptions>();
  auto* cmd = app.add_subcommand("schedule", "Print a noise schedule as CSV, or a sampler's timesteps");
  cmd->add_option("--schedule", o->schedule, "Beta schedule")
      ->check(CLI::IsMember({"linear", "cosine", "scaled-linear"}))
      ->capture_default_str();
  cmd->add_option("--timesteps,-T", o->timesteps, "Number of diffusion steps T")->check(CLI::Range(1, 100000))->capture_default_str();
  cmd->add_option("--beta-start", o->beta_start, "beta_1 (linear, scaled-linear)")->check(CLI::Range(0.0, 1.0))->capture_default_str();
  cmd->add_option("--beta-end", o->beta_end, "beta_T (linear, scaled-linear)")->check(CLI::Range(0.0, 1.0))->capture_default_str();
  cmd->add_option("--sampler", o->sampler, "Print this sampler's timesteps instead of the table")
      ->check(CLI::IsMember(sampler_names()));
  cmd->add_option("--steps", o->steps, "Sampler steps S")->check(positive_number())->capture_default_str();
  cmd->add_option("--spacing", o->spacing, "Timestep spacing")
      ->check(CLI::IsMember(timestep_spacing_names()))
      ->capture_default_str();
  cmd->callback([o] { run_schedule(*o); });
}

}  // namespace diffuse::cli
