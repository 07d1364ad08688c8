#include "diffuse/train/adamw.h"

#include <cmath>

#include "diffuse/runtime/settings.h"
#include "diffuse/train/flat_float.h"
#include "diffuse/util/target_clones.h"

namespace diffuse {

AdamW::AdamW(std::vector<torch::Tensor> params, AdamWOptions options) : params_(std::move(params)), options_(options) {
  for (const auto& p : params_) {
    m_.push_back(torch::zeros_like(p));
    v_.push_back(torch::zeros_like(p));
  }
}

void AdamW::zero_grad() {
  // Undefined, not zeroed: backward then hands each parameter its gradient tensor as is, instead
  // of adding it into a zeroed one (a fill and an add per parameter and step).
  for (auto& p : params_) p.mutable_grad() = torch::Tensor();
}

namespace {

// The whole update in one pass over a parameter's elements [begin, end): θ, g, m and v read once,
// θ, m and v written once. The multi-tensor kernels below take ten passes and allocate √v̂; on
// the CPU, where these loops wait on memory, that is what costs (a 36M-parameter model: about
// 3 GB moved per step instead of 1).
struct OnePassAdamW {
  float b1, b2, eps, decay, step, c2, grad_scale;

  OnePassAdamW(const AdamWOptions& o, double lr, double bias1, double bias2, double scale)
      : b1(static_cast<float>(o.beta1)),
        b2(static_cast<float>(o.beta2)),
        eps(static_cast<float>(o.eps)),
        decay(static_cast<float>(1.0 - lr * o.weight_decay)),
        step(static_cast<float>(lr / bias1)),
        c2(static_cast<float>(bias2)),
        grad_scale(static_cast<float>(scale)) {}
};

// Vectorised for the widest unit this CPU has (the square root and division too: the project
// builds with -fno-math-errno).
DIFFUSE_TARGET_CLONES void adamw_elements(const OnePassAdamW& o, float* theta, const float* grad, float* m1, float* m2,
                                          int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    const float gi = o.grad_scale * grad[i];
    const float mi = o.b1 * m1[i] + (1.0f - o.b1) * gi;       // m ← β₁ m + (1 − β₁) g
    const float vi = o.b2 * m2[i] + (1.0f - o.b2) * gi * gi;  // v ← β₂ v + (1 − β₂) g²
    m1[i] = mi;
    m2[i] = vi;
    theta[i] = theta[i] * o.decay - o.step * mi / (std::sqrt(vi / o.c2) + o.eps);  // θ ← θ(1 − lr λ) − lr m̂/(√v̂ + ε)
  }
}

}  // namespace

// LibTorch 2.x's fused AdamW kernel for GPU parameters: the whole update in one pass over θ, g, m
// and v, where the multi-tensor route below takes nine (on an H200, ~4 GB moved per
// `ddpm-cifar10` step instead of ~0.6). The same arithmetic: θ ← θ(1 − lr λ), then
// θ ← θ − lr/(1 − β₁ᵏ) · m / (√v/√(1 − β₂ᵏ) + ε); the step k is read from a device scalar.
// DIFFUSE_FUSED_ADAMW=0 takes the multi-tensor route (runtime/settings.h, which `bench --alternate`
// switches between steps).
bool AdamW::fused_step(const std::vector<torch::Tensor>& p, const std::vector<torch::Tensor>& g,
                       const std::vector<torch::Tensor>& m, const std::vector<torch::Tensor>& v, double lr) {
#if TORCH_VERSION_MAJOR >= 2
  if (!runtime_settings().fused_adamw) return false;
  const auto device = p.front().device();
  const auto dtype = p.front().scalar_type();
  for (size_t i = 0; i < p.size(); ++i) {
    for (const auto* t : {&p[i], &g[i], &m[i], &v[i]}) {
      if (!t->is_cuda() || t->device() != device || t->scalar_type() != dtype || !t->is_contiguous()) return false;
    }
  }
  if (dtype != torch::kFloat32 && dtype != torch::kBFloat16 && dtype != torch::kFloat16) return false;
  if (!device_step_.defined() || device_step_.device() != device) {
    device_step_ = torch::zeros({}, torch::dtype(torch::kFloat32).device(device));
  }
  device_step_.fill_(static_cast<double>(step_count_));  // k, already counted for this step
  const std::vector<torch::Tensor> steps(p.size(), device_step_);  // read, not written, by the kernel
  at::_fused_adamw_(p, g, m, v, /*max_exp_avg_sqs=*/{}, steps, lr, options_.beta1, options_.beta2,
                    options_.weight_decay, options_.eps, /*amsgrad=*/false, /*maximize=*/false);
  return true;
#else
  (void)p, (void)g, (void)m, (void)v, (void)lr;
  return false;  // LibTorch 1.13 has no fused AdamW
#endif
}

void AdamW::step(double lr, double grad_scale) {
  torch::NoGradGuard no_grad;
  ++step_count_;
  const double b1 = options_.beta1, b2 = options_.beta2;
  const double bias1 = 1.0 - std::pow(b1, static_cast<double>(step_count_));  // 1 − β₁ᵏ
  const double bias2 = 1.0 - std::pow(b2, static_cast<double>(step_count_));  // 1 − β₂ᵏ
  // float32 CPU parameters: one fused pass over all of them. The others (CUDA, float64): one
  // multi-tensor (_foreach) kernel per line over all of them, instead of one small kernel per
  // parameter and line (which on a GPU costs more in launches than in arithmetic).
  struct Pointers {
    float *theta, *grad, *m, *v;
  };
  std::vector<Pointers> flat;
  std::vector<int64_t> flat_sizes;
  std::vector<torch::Tensor> p, g, m, v;
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!params_[i].grad().defined()) continue;
    if (flat_float_cpu(params_[i], {params_[i].grad(), m_[i], v_[i]})) {
      flat.push_back({params_[i].data_ptr<float>(), params_[i].grad().data_ptr<float>(), m_[i].data_ptr<float>(),
                      v_[i].data_ptr<float>()});
      flat_sizes.push_back(params_[i].numel());
      continue;
    }
    p.push_back(params_[i]);
    g.push_back(grad_scale == 1.0 ? params_[i].grad() : params_[i].grad() * grad_scale);
    m.push_back(m_[i]);
    v.push_back(v_[i]);
  }
  if (!flat.empty()) {
    const OnePassAdamW update(options_, lr, bias1, bias2, grad_scale);
    parallel_over_chunks(element_chunks(flat_sizes), [&](size_t, const ElementChunk& c) {
      const auto& t = flat[c.tensor];
      adamw_elements(update, t.theta, t.grad, t.m, t.v, c.begin, c.end);
    });
  }
  if (p.empty()) return;
  if (fused_step(p, g, m, v, lr)) return;
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
