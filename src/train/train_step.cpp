#include "diffuse/train/train_step.h"

#include "diffuse/diffusion/elbo.h"
#include "diffuse/diffusion/label_dropout.h"
#include "diffuse/train/flat_float.h"
#include "diffuse/util/target_clones.h"

#include <algorithm>
#include <cmath>

namespace diffuse {

std::string to_string(TrainLoss loss) { return loss == TrainLoss::simple ? "simple" : "vlb"; }

TrainLoss train_loss_from_string(const std::string& name) {
  if (name == "simple") return TrainLoss::simple;
  if (name == "vlb") return TrainLoss::vlb;
  throw std::invalid_argument("unknown loss '" + name + "' (expected simple or vlb)");
}

namespace {

// Σ g² over n floats, summed in float64 in eight independent sums (so that the loop vectorises),
// for the widest unit this CPU has.
DIFFUSE_TARGET_CLONES double sum_of_squares(const float* g, int64_t n) {
  double lanes[8] = {};
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    for (int j = 0; j < 8; ++j) lanes[j] += static_cast<double>(g[k + j]) * g[k + j];
  }
  for (; k < n; ++k) lanes[0] += static_cast<double>(g[k]) * g[k];
  double sum = 0;
  for (double l : lanes) sum += l;
  return sum;
}

}  // namespace

std::optional<double> flat_grad_norm(const std::vector<torch::Tensor>& params) {
  std::vector<const float*> grads;
  std::vector<int64_t> sizes;
  for (const auto& p : params) {
    const auto& g = p.grad();
    if (!g.defined()) continue;
    if (!flat_float_cpu(g, {})) return std::nullopt;
    grads.push_back(g.data_ptr<float>());
    sizes.push_back(g.numel());
  }
  const auto chunks = element_chunks(sizes);
  std::vector<double> partial(chunks.size());  // Σ g² per chunk, in float64
  parallel_over_chunks(chunks, [&](size_t i, const ElementChunk& c) {
    partial[i] = sum_of_squares(grads[c.tensor] + c.begin, c.end - c.begin);
  });
  double total = 0;
  for (double s : partial) total += s;
  return std::sqrt(total);  // ‖g‖ = √(Σ_p Σ_k g_pk²)
}

torch::Tensor clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> grads;
  for (const auto& p : params)
    if (p.grad().defined()) grads.push_back(p.grad());
  if (grads.empty()) return torch::zeros({});
  // every ‖g_p‖ by one multi-tensor kernel (on a GPU: a few launches instead of one per parameter)
  auto norms = at::_foreach_norm(grads, 2);
  for (auto& n : norms) n = n.to(torch::kFloat32);
  auto total = torch::stack(norms).norm(2);                        // ‖g‖ = √(Σ_p ‖g_p‖²)
  auto scale = (max_norm / (total + 1e-6)).clamp_max(1.0);         // min(1, max_norm / ‖g‖)
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)
  const bool one_dtype = std::all_of(grads.begin(), grads.end(), [&](const torch::Tensor& g) {
    return g.scalar_type() == scale.scalar_type() && g.device() == scale.device();
  });
  if (one_dtype) {
    at::_foreach_mul_(grads, scale);  // g ← g · scale, a tensor: nothing read back to the host
    return total;
  }
#endif
  // (LibTorch 1.13 has no multi-tensor product with a tensor)
  for (auto& g : grads) g.mul_(scale.to(g.dtype()));
  return total;
}

TrainStep::TrainStep(UNet model, UNet ema_model, const GaussianDiffusion& diffusion, AdamW& optimizer, Ema& ema,
                     TrainStepOptions options)
    : model_(std::move(model)),
      ema_model_(std::move(ema_model)),
      diffusion_(diffusion),
      optimizer_(optimizer),
      ema_(ema),
      options_(options),
      params_(model_->parameters()) {
  if (options_.timestep_sampling.loss_aware) {
    loss_aware_.emplace(timestep_probabilities(options_.timestep_sampling, diffusion_.schedule()),
                        LossAwareTimesteps::kBins, LossAwareTimesteps::kHistory, LossAwareTimesteps::kMix,
                        options_.timestep_sampling.stratified);
  }
}

torch::Tensor TrainStep::operator()(const torch::Tensor& x0, const torch::Tensor& labels, double lr) {
  const int64_t B = x0.size(0);
  const int64_t classes = model_->config().num_classes;
  torch::Tensor loss;
  {
    AutocastScope autocast(x0.device(), options_.precision);
    torch::Tensor t, importance;  // importance: q_t / p_t where t is drawn by the loss
    if (loss_aware_) {
      auto draw = loss_aware_->sample(B);
      t = draw.t.to(x0.device());
      importance = draw.weights.to(x0.device());
    } else {
      t = options_.timestep_sampling.kind == TimestepSamplingKind::uniform && !options_.timestep_sampling.stratified
              ? diffusion_.sample_timesteps(B)
              : sample_timesteps(options_.timestep_sampling, diffusion_.schedule(), B).to(x0.device());
    }
    auto noise = torch::randn_like(x0);
    auto x_t = diffusion_.q_sample(x0, t, noise);  // x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε
    torch::Tensor y;  // labels or prompts, each dropped to ∅ (no label, the empty prompt) with probability p
    if (classes > 0) y = drop_labels(labels, classes, options_.label_dropout);
    if (model_->config().text_conditional()) {
      y = drop_condition_rows(labels, model_->null_condition(B, labels.device()), options_.label_dropout);
    }
    if (options_.image_condition) {  // the image's own condition (a random mask, its low resolution), or ∅ = 0
      const auto c = training_condition(*options_.image_condition, x0);
      y = drop_condition_rows(c, torch::zeros_like(c), options_.label_dropout);
    }
    auto model_out = model_->forward(x_t, t, y);  // same dtype as x_t (float32), also under autocast
    torch::Tensor per_image;                      // ℓ_i, kept where t is drawn by the loss
    if (options_.loss == TrainLoss::vlb) {
      const auto vb = vb_term_bpd(diffusion_, ModelVariance::posterior, x0, x_t, t,
                                  diffusion_.split_model_output(model_out, x_t, t, /*clip_x0=*/false));
      if (loss_aware_) {
        per_image = vb.to(torch::kFloat32);
      } else {
        loss = vb.mean().to(torch::kFloat32);
      }
    } else {
      const auto target = diffusion_.training_target(x0, noise, t);
      const auto weights =
          options_.min_snr_gamma > 0 ? diffusion_.min_snr_weights(t, options_.min_snr_gamma) : torch::Tensor();
      if (loss_aware_) {
        per_image = GaussianDiffusion::loss_per_image(model_out, target);
        if (weights.defined()) per_image = per_image * weights.to(per_image.scalar_type());
      } else {
        loss = weights.defined() ? GaussianDiffusion::loss_simple(model_out, target, weights)
                                 : GaussianDiffusion::loss_simple(model_out, target);
      }
    }
    if (loss_aware_) {  // ℓ_i recorded for the next draws; loss = mean_i (q_t / p_t)_i ℓ_i
      loss_aware_->record(t, per_image.detach());
      loss = (per_image * importance.to(per_image.scalar_type())).mean();
    }
  }
  optimizer_.zero_grad();
  loss.backward();
  if (hook_) hook_(params_);
  double grad_scale = 1.0;  // min(1, max_norm / ‖g‖), applied inside AdamW's pass where it can be
  if (options_.grad_clip > 0) {
    if (const auto norm = flat_grad_norm(params_)) {  // float32 CPU gradients: no device to wait for
      grad_scale = std::min(1.0, options_.grad_clip / (*norm + 1e-6));
    } else {
      clip_grad_norm(params_, options_.grad_clip);
    }
  }
  optimizer_.step(lr, grad_scale);
  ema_.update(*ema_model_, *model_);
  return loss.detach();
}

}  // namespace diffuse
