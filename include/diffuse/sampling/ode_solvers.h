// Solvers of the probability-flow ODE (Song et al. 2021) on the same ε-/x0-model.
//
// Two changes of variable make the ODE simple (Karras et al. 2022; Lu et al. 2022):
//   σ_t = √((1 − ᾱ_t)/ᾱ_t),  x̃ = x/√ᾱ_t         →  dx̃/dσ = ε(x, t)
//   α_t = √ᾱ_t, s_t = √(1 − ᾱ_t), λ_t = log(α_t/s_t) →  exact in the linear part, x̂_0 integrated
// Euler in (σ, x̃) is DDIM with η = 0 written differently (a test checks they agree);
// Heun adds a corrector (2 network calls per step); DPM-Solver++(2M) reuses the previous x̂_0.
#pragma once

#include "diffuse/sampling/sampler.h"

namespace diffuse {

// σ_t = √((1 − ᾱ_t)/ᾱ_t): the noise level of x̃ = x/√ᾱ_t (0 at the end, t = −1).
double karras_sigma(const NoiseSchedule& schedule, int64_t t);

// x̃_prev = x̃_t + (σ_prev − σ_t) ε̂_t                                   (Karras et al., Alg. 1)
class EulerSampler : public Sampler {
 public:
  EulerSampler(const NoiseSchedule& schedule, TimestepSpacing spacing) : Sampler(schedule, spacing) {}
  std::string name() const override { return "euler"; }
  StepOutput step(const Prediction& pred, int64_t t, int64_t t_prev, const torch::Tensor& x_t,
                  const c10::optional<torch::Generator>& gen, const Predictor& predict) override;

 private:
};

// Euler to x̃', then the trapezoid: x̃_prev = x̃_t + (σ_prev − σ_t)(ε̂_t + ε̂(x', t_prev))/2.
// The last step (σ_prev = 0, where the network is not defined) stays Euler, as in Karras Alg. 1.
class HeunSampler : public Sampler {
 public:
  HeunSampler(const NoiseSchedule& schedule, TimestepSpacing spacing) : Sampler(schedule, spacing) {}
  std::string name() const override { return "heun"; }
  StepOutput step(const Prediction& pred, int64_t t, int64_t t_prev, const torch::Tensor& x_t,
                  const c10::optional<torch::Generator>& gen, const Predictor& predict) override;
  int64_t evaluations(int64_t steps) const override { return 2 * steps - 1; }

 private:
};

// DPM-Solver++(2M) (Lu et al. 2022, Alg. 2), with h = λ_prev − λ_t and r = h_last/h:
//   D = (1 + 1/(2r)) x̂_0(t) − 1/(2r) x̂_0(t_last)        (first step: D = x̂_0(t))
//   x_prev = (s_prev/s_t) x_t − α_prev (e^{−h} − 1) D
// The step into index 0 is first order (D = x̂_0(t)): λ jumps there, r ≪ 1 on leading and
// linspace grids, and the second-order step is worse than DDIM's. The last step (s_prev = 0) is
// first order, x_prev = x̂_0(t), as in the reference solvers.
class DpmSolverPP2MSampler : public Sampler {
 public:
  DpmSolverPP2MSampler(const NoiseSchedule& schedule, TimestepSpacing spacing)
      : Sampler(schedule, spacing) {}
  std::string name() const override { return "dpm++2m"; }
  StepOutput step(const Prediction& pred, int64_t t, int64_t t_prev, const torch::Tensor& x_t,
                  const c10::optional<torch::Generator>& gen, const Predictor& predict) override;
  void reset() override;

  // λ_t = log(α_t/s_t) = ½ log(ᾱ_t/(1 − ᾱ_t)): half the log signal-to-noise ratio.
  double lambda(int64_t t) const;

 private:
  torch::Tensor x0_last_;  // x̂_0 of the previous step (undefined on the first)
  double h_last_ = 0.0;
};

}  // namespace diffuse
