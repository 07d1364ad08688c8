#include "diffuse/train/train_step.h"

#include "diffuse/diffusion/elbo.h"
#include "diffuse/sampling/guidance.h"

namespace diffuse {

std::string to_string(TrainLoss loss) { return loss == TrainLoss::simple ? "simple" : "vlb"; }

TrainLoss train_loss_from_string(const std::string& name) {
  if (name == "simple") return TrainLoss::simple;
  if (name == "vlb") return TrainLoss::vlb;
  throw std::invalid_argument("unknown loss '" + name + "' (expected simple or vlb)");
}

torch::Tensor clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> norms;
  for (const auto& p : params)
    if (p.grad().defined()) norms.push_back(p.grad().norm(2).to(torch::kFloat32));
  if (norms.empty()) return torch::zeros({});
  auto total = torch::stack(norms).norm(2);                        // ‖g‖ = √(Σ_p ‖g_p‖²)
  auto scale = (max_norm / (total + 1e-6)).clamp_max(1.0);         // min(1, max_norm / ‖g‖)
  for (const auto& p : params)
    if (p.grad().defined()) p.grad().mul_(scale.to(p.grad().dtype()));
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
      params_(model_->parameters()) {}

torch::Tensor TrainStep::operator()(const torch::Tensor& x0, const torch::Tensor& labels, double lr) {
  const int64_t B = x0.size(0);
  const int64_t classes = model_->config().num_classes;
  torch::Tensor loss;
  {
    AutocastScope autocast(x0.device(), options_.precision);
    auto t = diffusion_.sample_timesteps(B);
    auto noise = torch::randn_like(x0);
    auto x_t = diffusion_.q_sample(x0, t, noise);  // x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε
    torch::Tensor y;  // class-conditional: labels, each dropped to ∅ with probability p
    if (classes > 0) y = drop_labels(labels, classes, options_.label_dropout);
    auto model_out = model_->forward(x_t, t, y);  // same dtype as x_t (float32), also under autocast
    loss = options_.loss == TrainLoss::simple
               ? GaussianDiffusion::loss_simple(model_out, diffusion_.training_target(x0, noise))
               : vb_term_bpd(diffusion_.schedule(), ModelVariance::posterior, x0, x_t, t,
                             diffusion_.split_model_output(model_out, x_t, t, /*clip_x0=*/false))
                     .mean()
                     .to(torch::kFloat32);
  }
  optimizer_.zero_grad();
  loss.backward();
  if (hook_) hook_(params_);
  if (options_.grad_clip > 0) clip_grad_norm(params_, options_.grad_clip);
  optimizer_.step(lr);
  ema_.update(*ema_model_, *model_);
  return loss.detach();
}

}  // namespace diffuse
