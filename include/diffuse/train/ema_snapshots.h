// Snapshots of power-function EMAs taken during training, and the EMA of any length rebuilt from
// them after training (power_ema.h has the formulas).
//
// `train --ema-snapshot-every N` keeps two power-function EMAs beside the sampled one, of σ_rel
// 0.05 and 0.10 (Karras et al. 2024's pair), and every N steps and at the last step writes each
// as a checkpoint: RUN/ema_snapshots/sigma_rel_0.050_step_0005000.safetensors, its metadata the
// checkpoint's plus "ema_gamma" and "ema_sigma_rel". A snapshot samples like any checkpoint.
#pragma once

#include <array>
#include <string>
#include <vector>

#include "diffuse/checkpoint/checkpoint.h"
#include "diffuse/train/power_ema.h"

namespace diffuse {

inline constexpr std::array<double, 2> kEmaSnapshotSigmaRels{0.05, 0.10};

std::string ema_snapshot_dir(const std::string& run_dir);
std::string ema_snapshot_path(const std::string& run_dir, double sigma_rel, int64_t step);

// Writes a snapshot of `ema_model`, a power-function EMA of exponent γ at step info.step (atomic).
void save_ema_snapshot(const std::string& run_dir, const UNet& ema_model, const CheckpointInfo& info, double gamma);

struct EmaSnapshot {
  std::string path;
  PowerProfile profile;  // t = the step it was taken at, γ its EMA's exponent
};

// The snapshots in RUN/ema_snapshots, by step (their headers only). Throws if there are none or
// one's metadata lacks or garbles its step or γ.
std::vector<EmaSnapshot> list_ema_snapshots(const std::string& run_dir);

struct PosthocEma {
  LoadedCheckpoint checkpoint;  // the rebuilt weights, with the last snapshot's metadata and step
  PosthocEmaWeights fit;        // the snapshots' weights and how well their profiles fit the target's
  std::vector<EmaSnapshot> used;
};

// The EMA of relative width σ_rel at step `step` (≤ 0: the last snapshot's), rebuilt as
// Σ x_i θ̂_i over the snapshots taken at or before it (float64 sums, stored as the model's dtype).
// Throws if no snapshot is at or before `step`, or the snapshots are of different networks.
PosthocEma posthoc_ema(const std::string& run_dir, double sigma_rel, int64_t step, torch::Device device);

}  // namespace diffuse
