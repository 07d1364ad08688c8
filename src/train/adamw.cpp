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
  // One multi-tensor (_foreach) kernel per line over all parameters with a gradient, instead of one
  // small kernel per parameter and line (which on a GPU costs more in launches than in arithmetic).
  std::vector<torch::Tensor> p, g, m, v;
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!params_[i].grad().defined()) continue;
    p.push_back(params_[i]);
    g.push_back(params_[i].grad());
    m.push_back(m_[i]);
    v.push_back(v_[i]);
  }
  if (p.empty()) return;
  at::_foreach_mul_(m, b1);
  at::_foreach_add_(m, g, 1.0 - b1);            // m ← β₁ m + (1 − β₁) g
  at::_foreach_mul_(v, b2);
  at::_foreach_addcmul_(v, g, g, 1.0 - b2);     // v ← β₂ v + (1 − β₂) g²
  if (options_.weight_decay > 0) at::_foreach_mul_(p, 1.0 - lr * options_.weight_decay);  // θ ← θ − lr λ θ
  // θ ← θ − lr · m̂ / (√v̂ + ε), with m̂ = m/bias1, v̂ = v/bias2
  auto denom = at::_foreach_div(v, bias2);
  at::_foreach_sqrt_(denom);
  at::_foreach_add_(denom, options_.eps);
  at::_foreach_addcdiv_(p, m, denom, -lr / bias1);
}

}  // namespace diffuse
