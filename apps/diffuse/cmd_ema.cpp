// diffuse ema: an EMA of the weights of any width, rebuilt after training from the run's
// power-function EMA snapshots (train --ema-snapshot-every; train/ema_snapshots.h).
#include <cstdio>
#include <filesystem>
#include <memory>
#include <set>
#include <stdexcept>
#include <vector>

#include "commands.h"
#include "diffuse/train/ema_snapshots.h"

namespace diffuse::cli {

namespace {

struct EmaOptions {
  std::string run, out_dir;
  std::vector<double> sigma_rels;
  int64_t step = 0;
};

std::string checkpoint_name(double sigma_rel) {
  char name[64];
  std::snprintf(name, sizeof name, "/checkpoint_ema_%.3f.safetensors", sigma_rel);
  return name;
}

void run_ema(const EmaOptions& o) {
  std::set<std::string> names;  // one file per width: widths alike to three decimals would overwrite
  for (const double sigma_rel : o.sigma_rels) {
    if (!names.insert(checkpoint_name(sigma_rel)).second) {
      throw std::runtime_error("--sigma-rel: two widths are written as '" + checkpoint_name(sigma_rel).substr(1) +
                               "' (give them to three decimals apart)");
    }
  }
  const std::string out_dir = o.out_dir.empty() ? o.run : o.out_dir;
  std::filesystem::create_directories(out_dir);
  for (const double sigma_rel : o.sigma_rels) {
    const auto rebuilt = posthoc_ema(o.run, sigma_rel, o.step, torch::kCPU);
    const std::string path = out_dir + checkpoint_name(sigma_rel);
    save_checkpoint(path, rebuilt.checkpoint.model, rebuilt.checkpoint.info);
    // A profile error of a few per cent: the snapshots' widths or steps are too far from this one.
    constexpr double kLooseFit = 0.01;
    std::fprintf(
        stderr, "σ_rel %.3f (γ = %.2f) at step %lld from %zu snapshots, profile error %.1e%s: %s\n", sigma_rel,
        power_ema_gamma(sigma_rel), static_cast<long long>(rebuilt.checkpoint.info.step), rebuilt.used.size(),
        rebuilt.fit.relative_error,
        rebuilt.fit.relative_error > kLooseFit ? " (a loose fit: more snapshots, or widths nearer 0.05-0.10)" : "",
        path.c_str());
  }
}

}  // namespace

void add_ema_command(CLI::App& app) {
  auto o = std::make_shared<EmaOptions>();
  auto* cmd = app.add_subcommand(
      "ema", "Rebuild the EMA of any width from a run's EMA snapshots (train --ema-snapshot-every), as checkpoints");
  cmd->add_option("--run", o->run, "The run's directory (holds ema_snapshots/)")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--sigma-rel", o->sigma_rels,
                  "Widths of the EMAs to build, fractions of the steps so far, e.g. 0.05,0.1,0.2 (one checkpoint each)")
      ->required()
      ->delimiter(',')
      ->check(ema_sigma_rel_range());
  cmd->add_option("--step", o->step, "The EMA at this step, from the snapshots up to it (default: the last snapshot's)")
      ->check(non_negative_number());
  cmd->add_option("--out-dir", o->out_dir, "Where checkpoint_ema_SIGMA.safetensors go (default: --run)");
  cmd->callback([o] { run_ema(*o); });
}

}  // namespace diffuse::cli
