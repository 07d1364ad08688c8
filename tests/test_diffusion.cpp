// The forward process and the posterior against independent computations: the closed form
// q(x_t|x_0) against the step-by-step chain (Monte Carlo), the two forms of μ̃_t, the inverses.
#include <gtest/gtest.h>

#include <cmath>

#include "diffuse/diffusion/gaussian_diffusion.h"

using namespace diffuse;

namespace {
GaussianDiffusion make_diffusion(Objective objective = Objective::eps) {
  return GaussianDiffusion(NoiseSchedule(ScheduleConfig{}), objective, torch::kCPU);
}
torch::Tensor full_t(int64_t n, int64_t t) { return torch::full({n}, t, torch::kLong); }
}  // namespace

TEST(ForwardProcess, ClosedFormMatchesTheStepByStepChain) {
  // Chain x_t = √α_t x_{t−1} + √β_t ε for t steps (float64, 200k samples of one pixel at x_0 = 0.7)
  // and compare the mean and variance with the closed form √ᾱ_t x_0 and 1 − ᾱ_t.
  torch::manual_seed(0);
  NoiseSchedule s{ScheduleConfig{}};
  const int64_t N = 200000;
  const double x0 = 0.7;
  auto x = torch::full({N}, x0, torch::kFloat64);
  for (int64_t i = 0; i < 1000; ++i) {
    x = std::sqrt(s.alphas[i]) * x + std::sqrt(s.betas[i]) * torch::randn({N}, torch::kFloat64);
    if (i == 9 || i == 99 || i == 499 || i == 999) {
      const double mean = x.mean().item<double>(), var = x.var().item<double>();
      const double m_ref = s.sqrt_alpha_bar[i] * x0, v_ref = 1.0 - s.alpha_bar[i];
      // 5 standard errors of the Monte Carlo estimates
      EXPECT_NEAR(mean, m_ref, 5 * std::sqrt(v_ref / N)) << "t=" << i + 1;
      EXPECT_NEAR(var, v_ref, 5 * v_ref * std::sqrt(2.0 / N)) << "t=" << i + 1;
    }
  }
}

TEST(ForwardProcess, QSampleHasTheClosedFormMoments) {
  torch::manual_seed(1);
  auto d = make_diffusion();
  const int64_t N = 100000;
  for (int64_t t : {0, 250, 999}) {
    auto x0 = torch::full({N, 1, 1, 1}, -0.3);
    auto xt = d.q_sample(x0, full_t(N, t), torch::randn_like(x0));
    const double m_ref = d.schedule().sqrt_alpha_bar[t] * -0.3, v_ref = 1.0 - d.schedule().alpha_bar[t];
    EXPECT_NEAR(xt.mean().item<double>(), m_ref, 5 * std::sqrt(v_ref / N)) << "t=" << t;
    EXPECT_NEAR(xt.var().item<double>(), v_ref, 5 * v_ref * std::sqrt(2.0 / N) + 1e-6) << "t=" << t;
  }
}

TEST(Posterior, XZeroFormAndEpsilonFormOfTheMeanAgree) {
  // μ̃_t(x_t, x_0) = c1 x_0 + c2 x_t  must equal  (x_t − β_t/√(1−ᾱ_t) ε)/√α_t  when x_t = q_sample(x_0, ε).
  torch::manual_seed(2);
  auto d = make_diffusion();
  auto x0 = torch::rand({8, 1, 4, 4}) * 2 - 1;
  auto eps = torch::randn_like(x0);
  auto t = torch::tensor({0, 1, 5, 100, 400, 700, 998, 999}, torch::kLong);
  auto xt = d.q_sample(x0, t, eps);
  auto mean_x0_form = d.q_posterior(x0, xt, t).mean;
  auto mean_eps_form = d.p_mean_from_eps(xt, t, eps);
  const double diff = (mean_x0_form - mean_eps_form).abs().max().item<double>();
  std::printf("max |mu_x0_form - mu_eps_form| = %.3g\n", diff);
  EXPECT_LT(diff, 2e-5);
}

TEST(Posterior, MeanAndVarianceMatchBayesRuleNumerically) {
  // q(x_{t−1}|x_t, x_0) ∝ q(x_t|x_{t−1}) q(x_{t−1}|x_0): multiply the two Gaussians in x_{t−1}
  // in float64 and compare with the tables.
  NoiseSchedule s{ScheduleConfig{}};
  const double x0 = 0.4, xt = -0.2;
  for (int64_t i : {1, 10, 300, 999}) {
    // q(x_t|x_{t−1}) = N(x_t; √α_t x_{t−1}, β_t): as a function of x_{t−1}, precision α_t/β_t, mean x_t/√α_t
    const double prec1 = s.alphas[i] / s.betas[i], mean1 = xt / std::sqrt(s.alphas[i]);
    // q(x_{t−1}|x_0) = N(√ᾱ_{t−1} x_0, 1 − ᾱ_{t−1})
    const double prec2 = 1.0 / (1.0 - s.alpha_bar_prev[i]), mean2 = std::sqrt(s.alpha_bar_prev[i]) * x0;
    const double var = 1.0 / (prec1 + prec2), mean = var * (prec1 * mean1 + prec2 * mean2);
    EXPECT_NEAR(s.posterior_variance[i], var, 1e-12 * var + 1e-18) << "t=" << i + 1;
    EXPECT_NEAR(s.posterior_mean_coef1[i] * x0 + s.posterior_mean_coef2[i] * xt, mean, 1e-12) << "t=" << i + 1;
  }
}

TEST(ModelOutput, EpsAndX0ParameterisationsInvertEachOther) {
  torch::manual_seed(3);
  auto x0 = torch::rand({4, 1, 3, 3}) * 2 - 1;
  auto eps = torch::randn_like(x0);
  auto t = torch::tensor({0, 10, 500, 999}, torch::kLong);
  for (auto objective : {Objective::eps, Objective::x0}) {
    auto d = make_diffusion(objective);
    auto xt = d.q_sample(x0, t, eps);
    auto out = objective == Objective::eps ? eps : x0;
    auto p = d.split_model_output(out, xt, t, /*clip_x0=*/false);
    EXPECT_LT((p.x0 - x0).abs().max().item<double>(), 2e-3) << to_string(objective);  // ÷√ᾱ_T amplifies rounding
    EXPECT_LT((p.eps - eps).abs().max().item<double>(), 1e-3) << to_string(objective);
    EXPECT_EQ(d.training_target(x0, eps).data_ptr(), out.data_ptr());
  }
}

TEST(ModelOutput, ClippingKeepsThePairConsistent) {
  auto d = make_diffusion();
  auto xt = torch::full({1, 1, 1, 1}, 3.0);
  auto t = full_t(1, 10);
  auto p = d.split_model_output(torch::full({1, 1, 1, 1}, -1.0), xt, t, /*clip_x0=*/true);
  EXPECT_LE(p.x0.abs().max().item<double>(), 1.0);
  // x_t = √ᾱ x̂_0 + √(1−ᾱ) ε̂ still holds
  EXPECT_NEAR(d.q_sample(p.x0, t, p.eps).item<double>(), 3.0, 1e-4);
}

TEST(ModelOutput, DiffusersClippingKeepsTheNetworksEps) {
  auto base = make_diffusion();
  GaussianDiffusion d(base.schedule(), Objective::eps, torch::kCPU, ClippedEps::keep);
  auto xt = torch::full({1, 1, 1, 1}, 3.0);
  auto t = full_t(1, 10);
  const auto eps = torch::full({1, 1, 1, 1}, -1.0);
  auto p = d.split_model_output(eps, xt, t, /*clip_x0=*/true);
  EXPECT_DOUBLE_EQ(p.x0.item<double>(), 1.0);  // x̂_0 = (3 + √(1−ᾱ))/√ᾱ > 1, clipped
  EXPECT_TRUE(torch::equal(p.eps, eps));  // ε̂ as the network gave it (DDIMScheduler, use_clipped_model_output false)
}

TEST(Loss, SimpleLossIsTheMeanSquaredError) {
  auto a = torch::tensor({1.0, 2.0, 3.0}, torch::kFloat64), b = torch::tensor({1.0, 0.0, 0.0}, torch::kFloat64);
  EXPECT_NEAR(GaussianDiffusion::loss_simple(a, b).item<double>(), (0.0 + 4.0 + 9.0) / 3.0, 1e-12);
}
