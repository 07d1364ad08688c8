// Exponential moving average of the weights; sampling uses the averaged network.
//   θ_ema ← d θ_ema + (1 − d) θ,   d = min(decay, (1 + k)/(10 + k)) at update k
// The warm-up of d lets a short run's average forget the random initialisation quickly.
#pragma once

#include <torch/torch.h>

namespace diffuse {

class Ema {
 public:
  explicit Ema(double decay) : decay_(decay) {}
  void update(torch::nn::Module& averaged, const torch::nn::Module& model);
  int64_t updates() const { return updates_; }
  void set_updates(int64_t k) { updates_ = k; }
  double current_decay() const;

 private:
  double decay_;
  int64_t updates_ = 0;
};

}  // namespace diffuse
