// ODE solvers (Euler, Heun, DPM-Solver++(2M)) against the exact probability-flow ODE for Gaussian
// data, where both the ideal ε-prediction and the ODE's solution are known in closed form:
//   x_0 ~ N(μ, s²)  ⇒  x_t ~ N(√ᾱ_t μ, v_t), v_t = ᾱ_t s² + 1 − ᾱ_t,
//   E[ε | x_t] = √(1 − ᾱ_t) (x_t − √ᾱ_t μ)/v_t,   E[x_0 | x_t] = μ + √ᾱ_t s² (x_t − √ᾱ_t μ)/v_t,
// and the ODE's flow keeps the standardised value z = (x_t − √ᾱ_t μ)/√v_t (a monotone map of one
// Gaussian onto another), so the exact x_{t'} = √ᾱ_{t'} μ + √v_{t'} z.
#include <gtest/gtest.h>

#include <cmath>

#include "diffuse/sampling/ddim.h"
#include "diffuse/sampling/ode_solvers.h"
#include "diffuse/sampling/sample_loop.h"

using namespace diffuse;

namespace {

constexpr double kMu = 0.4, kS = 0.2;

GaussianDiffusion make_diffusion() { return GaussianDiffusion(NoiseSchedule(ScheduleConfig{}), Objective::eps, torch::kCPU); }

struct GaussianData {
  const NoiseSchedule& schedule;
  double variance(int64_t t) const {
    const double ab = schedule.alpha_bar_at(t);
    return ab * kS * kS + 1.0 - ab;
  }
  Prediction predict(const torch::Tensor& x, int64_t t) const {
    const double ab = schedule.alpha_bar_at(t), v = variance(t);
    auto centred = x - std::sqrt(ab) * kMu;
    return Prediction{kMu + (std::sqrt(ab) * kS * kS / v) * centred, (std::sqrt(1.0 - ab) / v) * centred};
  }
  // The point of x_t's marginal with standardised value z.
  torch::Tensor at(const torch::Tensor& z, int64_t t) const {
    return std::sqrt(schedule.alpha_bar_at(t)) * kMu + std::sqrt(variance(t)) * z;
  }
  torch::Tensor exact(const torch::Tensor& x, int64_t t_from, int64_t t_to) const {
    return at((x - std::sqrt(schedule.alpha_bar_at(t_from)) * kMu) / std::sqrt(variance(t_from)), t_to);
  }
};

// Solves from t_hi to t_lo on S uniform steps (t_hi − t_lo divisible by S); returns the max error.
double solve_error(Sampler& sampler, const GaussianData& data, int64_t t_hi, int64_t t_lo, int64_t S) {
  auto x_hi = data.at(torch::linspace(-3, 3, 61, torch::kDouble), t_hi);  // z from −3 to 3
  Predictor predict = [&](const torch::Tensor& x, int64_t t) { return data.predict(x, t); };
  sampler.reset();
  auto x = x_hi;
  for (int64_t i = 0; i < S; ++i) {
    const int64_t t = t_hi - i * (t_hi - t_lo) / S, t_prev = t_hi - (i + 1) * (t_hi - t_lo) / S;
    x = sampler.step(predict(x, t), t, t_prev, x, c10::nullopt, predict).x_prev;
  }
  return (x - data.exact(x_hi, t_hi, t_lo)).abs().max().item<double>();
}

}  // namespace

TEST(OdeSolvers, EulerInSigmaIsDdimWithEtaZero) {
  auto d = make_diffusion();
  EulerSampler euler(d.schedule(), TimestepSpacing::leading);
  DdimSampler ddim(d.schedule(), TimestepSpacing::leading, 0.0);
  GaussianData data{d.schedule()};
  auto x = torch::randn({100}, torch::kDouble);
  for (auto [t, t_prev] : {std::pair<int64_t, int64_t>{999, 900}, {500, 20}, {10, -1}, {1, 0}}) {
    auto p = data.predict(x, t);
    auto a = euler.step(p, t, t_prev, x, c10::nullopt, {}).x_prev;
    auto b = ddim.step(p, t, t_prev, x, c10::nullopt, {}).x_prev;
    EXPECT_LT((a - b).abs().max().item<double>(), 1e-10) << t << " -> " << t_prev;
  }
}

TEST(OdeSolvers, DpmSolverFirstStepIsDdim) {
  // Without history DPM-Solver++ is first order, and its first-order form is exactly DDIM (η = 0).
  auto d = make_diffusion();
  DpmSolverPP2MSampler dpm(d.schedule(), TimestepSpacing::leading);
  DdimSampler ddim(d.schedule(), TimestepSpacing::leading, 0.0);
  GaussianData data{d.schedule()};
  auto x = torch::randn({100}, torch::kDouble);
  auto p = data.predict(x, 700);
  auto a = dpm.step(p, 700, 400, x, c10::nullopt, {}).x_prev;
  auto b = ddim.step(p, 700, 400, x, c10::nullopt, {}).x_prev;
  EXPECT_LT((a - b).abs().max().item<double>(), 1e-10);
}

TEST(OdeSolvers, ExactOnGaussianDataAtManySteps) {
  auto d = make_diffusion();
  GaussianData data{d.schedule()};
  for (const std::string name : {"ddim", "euler", "heun", "dpm++2m"}) {
    auto sampler = make_sampler(SamplerConfig{name}, d.schedule());
    EXPECT_LT(solve_error(*sampler, data, 900, 100, 800), 2e-3) << name;
  }
}

TEST(OdeSolvers, ErrorShrinksAtTheSolversOrder) {
  // Halving the step must divide the error by about 2^p: p = 1 for DDIM/Euler, 2 for Heun and
  // DPM-Solver++(2M). Measured ratios are printed; bounds leave room around 2 and 4.
  auto d = make_diffusion();
  GaussianData data{d.schedule()};
  for (auto [name, order] : {std::pair<std::string, int>{"ddim", 1}, {"euler", 1}, {"heun", 2}, {"dpm++2m", 2}}) {
    auto sampler = make_sampler(SamplerConfig{name}, d.schedule());
    std::vector<double> errors;
    for (int64_t S : {10, 20, 40, 80}) errors.push_back(solve_error(*sampler, data, 900, 100, S));
    for (size_t i = 1; i < errors.size(); ++i) {
      const double ratio = errors[i - 1] / errors[i];
      std::printf("  %-8s S=%-3d error %.3e  ratio %.2f\n", name.c_str(), 10 << i, errors[i], ratio);
      if (i + 1 == errors.size()) {  // asymptotic regime: the finest pair
        if (order == 1) {
          EXPECT_GT(ratio, 1.7) << name;
          EXPECT_LT(ratio, 2.5) << name;
        } else {
          EXPECT_GT(ratio, 3.3) << name;
          EXPECT_LT(ratio, 5.0) << name;
        }
      }
    }
  }
}

TEST(OdeSolvers, HeunCallsTheNetworkTwicePerStepButTheLast) {
  auto d = make_diffusion();
  HeunSampler heun(d.schedule(), TimestepSpacing::leading);
  int64_t calls = 0;
  Denoiser net = [&](const torch::Tensor& x, const torch::Tensor&) {
    ++calls;
    return 0.1 * x;
  };
  auto gen = at::detail::createCPUGenerator(1);
  sample_loop(d, heun, net, torch::randn({2, 1, 4, 4}), SampleOptions{10, true}, gen);
  EXPECT_EQ(calls, 19);
  EXPECT_EQ(heun.evaluations(10), 19);
}
