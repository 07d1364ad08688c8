// AdamW (Loshchilov & Hutter 2019), written out so every moment is visible and its state can be
// saved beside the weights:
//   m ← β₁ m + (1 − β₁) g                  first moment
//   v ← β₂ v + (1 − β₂) g²                 second moment
//   m̂ = m / (1 − β₁ᵏ),  v̂ = v / (1 − β₂ᵏ)   bias corrections at step k
//   θ ← θ − lr · (m̂ / (√v̂ + ε) + λ θ)      decoupled weight decay λ
#pragma once

#include <torch/torch.h>

#include <vector>

namespace diffuse {

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
};

class AdamW {
 public:
  AdamW(std::vector<torch::Tensor> params, AdamWOptions options);

  void zero_grad();  // the gradients become undefined, as for a fresh model
  // Parameters without a gradient are skipped. grad_scale multiplies every gradient first
  // (g ← s·g): gradient clipping, folded into the update's pass.
  void step(double lr, double grad_scale = 1.0);

  int64_t step_count() const { return step_count_; }
  void set_step_count(int64_t k) { step_count_ = k; }
  std::vector<torch::Tensor>& first_moments() { return m_; }
  std::vector<torch::Tensor>& second_moments() { return v_; }

 private:
  // The update by LibTorch 2.x's fused kernel where it applies (GPU tensors of one dtype); false
  // where it does not, and the multi-tensor route runs instead.
  bool fused_step(const std::vector<torch::Tensor>& p, const std::vector<torch::Tensor>& g,
                  const std::vector<torch::Tensor>& m, const std::vector<torch::Tensor>& v, double lr);

  std::vector<torch::Tensor> params_, m_, v_;
  AdamWOptions options_;
  int64_t step_count_ = 0;
  torch::Tensor device_step_;  // k on the GPU, for the fused kernel
};

}  // namespace diffuse
