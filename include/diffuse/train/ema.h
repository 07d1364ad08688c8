// Exponential moving average of the weights; sampling uses the averaged network.
//   θ_ema ← d θ_ema + (1 − d) θ,   d = min(decay, (1 + k)/(10 + k)) at update k = 0, 1, …
// The warm-up of d lets a short run's average forget the random initialisation quickly.
// Ema::power(γ) is the power-function EMA instead, d = (1 − 1/(k + 1))^(γ+1) (power_ema.h): an
// average over a fixed fraction of the run so far, whatever its length.
#pragma once

#include <torch/torch.h>

namespace diffuse {

class Ema {
 public:
  explicit Ema(double decay) : decay_(decay) {}
  static Ema power(double gamma);
  bool is_power() const { return gamma_ >= 0.0; }
  double gamma() const { return gamma_; }
  void update(torch::nn::Module& averaged, const torch::nn::Module& model);
  int64_t updates() const { return updates_; }
  void set_updates(int64_t k) { updates_ = k; }
  double current_decay() const;

 private:
  double decay_;
  double gamma_ = -1.0;  // ≥ 0: the power-function EMA's exponent
  int64_t updates_ = 0;
};

}  // namespace diffuse
