#include "diffuse/train/adamw.h"

#include <cmath>

namespace diffuse {

AdamW::AdamW(std::vector<torch::Tensor> params, AdamWOptions options) : params_(std::move(params)), options_(options) {
  for (const auto& p : params_) {
    m_.push_back(torch::zeros_like(p));
    v_.push_back(torch::zeros_like(p));
  }
}

void AdamW::zero_grad() {
  for (auto& p : params_)
    if (p.grad().defined()) p.mutable_grad().zero_();
}

void AdamW::step(double lr) {
  torch::NoGradGuard no_grad;
  ++step_count_;
  const double b1 = options_.beta1, b2 = options_.beta2;
  const double bias1 = 1.0 - std::pow(b1, static_cast<double>(step_count_));  // 1 − β₁ᵏ
  const double bias2 = 1.0 - std::pow(b2, static_cast<double>(step_count_));  // 1 − β₂ᵏ
  for (size_t i = 0; i < params_.size(); ++i) {
    auto& p = params_[i];
    if (!p.grad().defined()) continue;
    const auto& g = p.grad();
    m_[i].mul_(b1).add_(g, 1.0 - b1);             // m ← β₁ m + (1 − β₁) g
    v_[i].mul_(b2).addcmul_(g, g, 1.0 - b2);      // v ← β₂ v + (1 − β₂) g²
    if (options_.weight_decay > 0) p.mul_(1.0 - lr * options_.weight_decay);  // θ ← θ − lr λ θ
    // θ ← θ − lr · m̂ / (√v̂ + ε), with m̂ = m/bias1, v̂ = v/bias2
    auto denom = (v_[i] / bias2).sqrt_().add_(options_.eps);
    p.addcdiv_(m_[i], denom, -lr / bias1);
  }
}

}  // namespace diffuse
