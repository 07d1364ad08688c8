// One optimisation step of the diffusion model, shared by the trainer and `diffuse bench`:
//   t ~ q (uniform U{0..T−1}, or diffusion/timestep_sampling.h), ε ~ N(0, I), x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε
//   loss = L_simple (optionally min-SNR-γ weighted) or L_vlb at t (optionally under bf16 autocast); with t
//   drawn by the loss (loss_aware_timesteps.h), each image's loss weighted by q_t / p_t
//   backward → [gradient hook, e.g. all-reduce] → clip ‖g‖ → AdamW → EMA
// Nothing in a step waits for the device: the loss comes back as a tensor.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <optional>

#include "diffuse/diffusion/gaussian_diffusion.h"
#include "diffuse/diffusion/image_condition.h"
#include "diffuse/diffusion/loss_aware_timesteps.h"
#include "diffuse/diffusion/timestep_sampling.h"
#include "diffuse/model/unet.h"
#include "diffuse/runtime/precision.h"
#include "diffuse/train/adamw.h"
#include "diffuse/train/ema.h"

namespace diffuse {

enum class TrainLoss { simple, vlb };
std::string to_string(TrainLoss loss);
TrainLoss train_loss_from_string(const std::string& name);

struct TrainStepOptions {
  TrainLoss loss = TrainLoss::simple;
  double min_snr_gamma = 0.0;  // L_simple's images weighted by min-SNR-γ (GaussianDiffusion::min_snr_weights; ≤ 0: off)
  double grad_clip = 1.0;       // max global gradient norm (≤ 0: off)
  double label_dropout = 0.1;   // conditional models: P(label, caption or image condition → ∅)
  Precision precision = Precision::fp32;
  // Image-conditional models: each image's condition is made from the image itself (training_condition).
  std::optional<ImageCondition> image_condition;
  TimestepSampling timestep_sampling;  // how each image's t is drawn (uniform: DDPM's)
};

// Scales the gradients so that their global L2 norm is at most max_norm, without reading the
// norm back to the host: g ← g · min(1, max_norm / (‖g‖ + 1e-6)). Returns ‖g‖ before clipping.
torch::Tensor clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm);

// ‖g‖ over the parameters' gradients in one parallel pass, summed in float64, where every defined
// gradient is a dense float32 CPU tensor; nullopt otherwise. The training step then folds the
// clipping scale into AdamW's pass instead of scaling each gradient on its own.
std::optional<double> flat_grad_norm(const std::vector<torch::Tensor>& params);

class TrainStep {
 public:
  // Called between backward and clipping (data parallelism all-reduces the gradients here).
  using GradientHook = std::function<void(const std::vector<torch::Tensor>& params)>;

  TrainStep(UNet model, UNet ema_model, const GaussianDiffusion& diffusion, AdamW& optimizer, Ema& ema,
            TrainStepOptions options);

  // x0: [B, C, H, W] in [−1, 1] on the model's device; labels: the conditions, [B] class labels,
  // [B, L] token ids of the captions for a text-conditional model, or undefined. Returns the loss.
  torch::Tensor operator()(const torch::Tensor& x0, const torch::Tensor& labels, double lr);

  void set_gradient_hook(GradientHook hook) { hook_ = std::move(hook); }
  // The loss-aware draw of t (TimestepSampling::loss_aware), whose state a run saves and resumes; else null.
  LossAwareTimesteps* loss_aware_timesteps() { return loss_aware_ ? &*loss_aware_ : nullptr; }

 private:
  UNet model_, ema_model_;
  const GaussianDiffusion& diffusion_;
  AdamW& optimizer_;
  Ema& ema_;
  TrainStepOptions options_;
  std::vector<torch::Tensor> params_;
  GradientHook hook_;
  std::optional<LossAwareTimesteps> loss_aware_;
};

}  // namespace diffuse
