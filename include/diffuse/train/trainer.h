// The training loop: L_simple on random t, AdamW with warm-up and clipping, EMA, a CSV log,
// preview grids from the EMA model, atomic checkpoints and exact resume.
//
// A run directory holds
//   checkpoint.safetensors   EMA weights + metadata: all `diffuse sample` needs
//   train_state.safetensors  raw weights, EMA, AdamW moments, RNG and loader state (for --resume)
//   log.csv                  step,loss,lr,images_per_second,elapsed_seconds
//   preview_STEP.png         DDIM-50 samples from the EMA model
//   ema_snapshots/           with ema_snapshot_every: power-function EMAs to rebuild any EMA from
#pragma once

#include <atomic>
#include <optional>
#include <string>

#include "diffuse/checkpoint/checkpoint.h"
#include "diffuse/data/dataset.h"
#include "diffuse/runtime/precision.h"
#include "diffuse/train/data_parallel.h"
#include "diffuse/train/train_step.h"

namespace diffuse {

// L_simple: ‖target − f_θ(x_t, t)‖² (DDPM eq. 14). L_vlb: the bound's own terms L_{t−1} and L_0
// at the drawn t (σ² = β̃), in bits/dim: for ε-prediction, w(t)‖ε − ε_θ‖² with
// w(t) = β_t² / (2σ_t² α_t (1 − ᾱ_t)) per dimension, so training optimises the ELBO itself.
// (TrainLoss and the step itself live in train_step.h.)

struct TrainConfig {
  std::string out_dir;
  TrainLoss loss = TrainLoss::simple;
  double min_snr_gamma = 0.0;  // simple loss: min-SNR-γ weights per image (≤ 0: off)
  TimestepSampling timestep_sampling;  // how t is drawn (diffusion/timestep_sampling.h)
  int64_t steps = 2400;
  // > 0: the steps are fitted to this many minutes of training, from the speed of steps 10 to 50,
  // and fitted again at each tenth of the budget up to eight tenths, from the speed since the fit
  // before (steps: the most it may take; the cosine decay follows the latest fit); see fitted_steps.
  double minutes = 0.0;
  int64_t batch_size = 64;
  double lr = 1e-3;
  int64_t warmup = 100;          // linear learning-rate warm-up over this many steps
  bool cosine_decay = true;      // after warm-up, lr decays to 0 along a half cosine by `steps`
  double grad_clip = 1.0;        // max global gradient norm (≤ 0: off)
  double ema_decay = 0.999;
  double ema_sigma_rel = 0.0;      // > 0: the sampled weights are the power-function EMA of this σ_rel instead
  int64_t ema_snapshot_every = 0;  // > 0: EMA snapshots every N steps for `diffuse ema` (train/ema_snapshots.h)
  double adam_beta1 = 0.9;  // AdamW's moment decays: m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g²
  double adam_beta2 = 0.999;
  double weight_decay = 0.0;
  double label_dropout = 0.1;    // class-conditional models: P(label → ∅), for classifier-free guidance
  Precision precision = Precision::fp32;            // bf16: mixed precision (autocast), fp32 master weights
  MemoryFormat memory_format = MemoryFormat::nchw;  // channels-last: NHWC activations and weights
  uint64_t seed = 0;
  int64_t checkpoint_every = 400;
  int64_t preview_every = 400;   // 0: only at the end
  int64_t preview_n = 64;
  int64_t log_every = 50;
  bool resume = false;
  bool progress = true;
  const std::atomic<bool>* stop = nullptr;  // set (e.g. by SIGINT) to checkpoint and return early
  // Data parallelism (not owned): this rank trains on its shard with gradients averaged over all
  // ranks; batch_size is per rank; only rank 0 writes the log, previews and checkpoints.
  DataParallel* data_parallel = nullptr;
};

struct TrainResult {
  int64_t step = 0;          // last completed step
  int64_t steps = 0;         // the run's total steps (fitted, under minutes)
  double loss = 0.0;         // mean loss over the last logging window
  double seconds = 0.0;      // wall time of this invocation
  bool interrupted = false;
};

// Learning rate at 0-based step k: lr · min(1, (k + 1)/warmup), times ½(1 + cos(π p)) with
// p = (k − warmup)/(steps − warmup) after the warm-up when cosine_decay is on.
double learning_rate(const TrainConfig& config, int64_t step);

// The total steps of a run with a time budget of `minutes`, fitted at step `at` from
// `seconds_per_step` and the `elapsed` seconds so far: the steps that fit 97 % of the time left
// (3 % for the previews, checkpoints and the end), in whole tens where there are more than a
// hundred, never fewer than `at` nor more than `most`.
int64_t fitted_steps(double minutes, int64_t at, double elapsed, double seconds_per_step, int64_t most);

// The steps of a run with a time budget, fitted as it goes: at step kFitFrom + kFitSteps from the
// speed of the kFitSteps before it (the first steps time the kernels and fill the caches), then at
// each tenth of the budget up to kLastRefit tenths from the speed since the fit before (or of the
// window before that, where it was slower), so that a run whose neighbours slow it down or leave
// still ends near the budget, and one whose neighbour pauses briefly does not overshoot it. Each
// fit is fitted_steps.
// Inactive (never fits) without a budget, or for a run resumed past the first fit.
class StepBudget {
 public:
  static constexpr int64_t kFitFrom = 10, kFitSteps = 40, kLastRefit = 8;
  struct Fit {
    int64_t steps = 0;              // the run's new total
    double seconds_per_step = 0.0;  // the speed it was fitted to,
    int64_t timed_from = 0, timed_to = 0;  // timed over these steps
  };
  StepBudget(double minutes, int64_t most_steps, int64_t first_step);
  // After `step` (1-based count of steps done), `elapsed` seconds into training: a new total where
  // a fit changes it, else nothing.
  std::optional<Fit> after_step(int64_t step, double elapsed);

 private:
  double minutes_;
  int64_t most_, steps_;
  bool active_;
  int64_t fit_from_, last_fit_step_;
  double last_fit_seconds_ = 0.0;
  int64_t fitted_tenth_ = -1;  // the tenth of the budget the last fit fell in (−1: none yet)
  std::optional<Fit> previous_window_;  // the last refit's own window (not the first fit's)
};

// Trains `info.model` on `data`. With config.resume and a train_state in out_dir, continues
// from it (model, schedule and objective then come from the saved state).
TrainResult train(const TrainConfig& config, CheckpointInfo info, const Dataset& data, torch::Device device);

}  // namespace diffuse
