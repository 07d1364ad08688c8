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

// The ideal ε-network of the Gaussian data, as sample_loop sees a network: float64 in, float64 out.
Denoiser gaussian_denoiser(const GaussianData& data) {
  return [&data](const torch::Tensor& x, const torch::Tensor& t) { return data.predict(x, t[0].item<int64_t>()).eps; };
}

// x_0 by the public loop from x_T = the points z ∈ [−3, 3] of q(x_{T−1}); max error against the
// exact flow's x_0 = μ + s z.
double loop_error(const GaussianDiffusion& d, const GaussianData& data, const SamplerConfig& config, int64_t S) {
  auto sampler = make_sampler(config, d.schedule());
  const auto z = torch::linspace(-3, 3, 61, torch::kDouble).view({61, 1, 1, 1});
  const int64_t last = d.timesteps() - 1;
  const auto x0 = sample_loop(d, *sampler, gaussian_denoiser(data), data.at(z, last), SampleOptions{S, false}, c10::nullopt);
  return (x0 - data.exact(data.at(z, last), last, -1)).abs().max().item<double>();
}

}  // namespace

TEST(OdeSolvers, FloatSixtyFourThroughThePublicLoopIsExactToFloatSixtyFour) {
  // Euler and DDIM with η = 0 are one method, and DDIM with η = 1 on the full grid is DDPM with
  // σ² = β̃: through sample_loop in float64 (every table in x's precision) they agree to 1e-10.
  auto d = make_diffusion();
  GaussianData data{d.schedule()};
  const auto x_T = torch::randn({4, 1, 3, 3}, torch::kDouble);
  auto run = [&](const SamplerConfig& config, int64_t S) {
    auto sampler = make_sampler(config, d.schedule());
    auto gen = at::detail::createCPUGenerator(3);
    auto x = sample_loop(d, *sampler, gaussian_denoiser(data), x_T, SampleOptions{S, false}, gen);
    EXPECT_EQ(x.scalar_type(), torch::kFloat64);
    return x;
  };
  EXPECT_LT((run(SamplerConfig{"euler"}, 50) - run(SamplerConfig{"ddim"}, 50)).abs().max().item<double>(), 1e-10);
  SamplerConfig ddim_eta_one{"ddim"};
  ddim_eta_one.eta = 1.0;
  EXPECT_LT((run(ddim_eta_one, 1000) - run(SamplerConfig{"ddpm"}, 1000)).abs().max().item<double>(), 1e-10);
}

TEST(OdeSolvers, DpmSolverBeatsDdimAtFewStepsOnEverySpacing) {
  // Gaussian data, the whole chain: DPM-Solver++(2M), second order, must be more accurate than
  // DDIM at the same number of steps. A second-order step into index 0 (r ≈ 0.2–0.3 there)
  // made it worse than DDIM at S = 50 on the leading and linspace grids (0.088 against 0.071).
  auto d = make_diffusion();
  GaussianData data{d.schedule()};
  for (const auto& name : timestep_spacing_names()) {
    const auto spacing = timestep_spacing_from_string(name);
    for (int64_t S : {10, 20, 50}) {
      const double ddim = loop_error(d, data, SamplerConfig{"ddim", spacing}, S);
      const double dpm = loop_error(d, data, SamplerConfig{"dpm++2m", spacing}, S);
      std::printf("  %-8s S=%-3lld ddim %.3e  dpm++2m %.3e\n", to_string(spacing).c_str(), static_cast<long long>(S),
                  ddim, dpm);
      EXPECT_LT(dpm, ddim) << to_string(spacing) << " S=" << S;
    }
  }
}

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
