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
  for (auto objective : {Objective::eps, Objective::x0, Objective::v}) {
    auto d = make_diffusion(objective);
    auto xt = d.q_sample(x0, t, eps);
    auto out = d.training_target(x0, eps, t);
    if (objective != Objective::v) EXPECT_EQ(out.data_ptr(), (objective == Objective::eps ? eps : x0).data_ptr());
    auto p = d.split_model_output(out, xt, t, /*clip_x0=*/false);
    EXPECT_LT((p.x0 - x0).abs().max().item<double>(), 2e-3) << to_string(objective);  // ÷√ᾱ_T amplifies rounding
    EXPECT_LT((p.eps - eps).abs().max().item<double>(), 1e-3) << to_string(objective);
    EXPECT_EQ(objective_from_string(to_string(objective)), objective);
  }
  EXPECT_THROW(objective_from_string("velocity"), std::invalid_argument);
}

TEST(ModelOutput, VIsTheVelocityOfTheCircleThroughDataAndNoise) {
  // Salimans & Ho §4: x_φ = cos φ x_0 + sin φ ε with φ_t = atan(√(1−ᾱ_t)/√ᾱ_t) is x_t, and v = dx_φ/dφ.
  // Central differences of x_φ in float64 against training_target.
  torch::manual_seed(5);
  NoiseSchedule s{ScheduleConfig{}};
  GaussianDiffusion d(s, Objective::v, torch::kCPU);
  auto x0 = torch::rand({3, 1, 2, 2}, torch::kFloat64) * 2 - 1;
  auto eps = torch::randn_like(x0);
  const std::vector<int64_t> steps{0, 400, 999};
  const auto t = torch::tensor(steps, torch::kLong);
  const auto v = d.training_target(x0, eps, t);
  const auto xt = d.q_sample(x0, t, eps);
  const double h = 1e-6;
  for (int64_t b = 0; b < 3; ++b) {
    const double phi = std::atan2(std::sqrt(1 - s.alpha_bar[steps[b]]), std::sqrt(s.alpha_bar[steps[b]]));
    auto x_at = [&](double p) { return std::cos(p) * x0[b] + std::sin(p) * eps[b]; };
    EXPECT_LT((x_at(phi) - xt[b]).abs().max().item<double>(), 1e-12);
    EXPECT_LT(((x_at(phi + h) - x_at(phi - h)) / (2 * h) - v[b]).abs().max().item<double>(), 1e-8) << steps[b];
  }
}

TEST(Loss, MinSnrWeightsTheErrorInXZeroByMinOfSnrAndGamma) {
  // For any network output, w · ‖target − out‖² = min(SNR_t, γ) · ‖x_0 − x̂_0‖² per image, with x̂_0
  // from split_model_output: the three objectives then train on one loss (Hang et al. 2023, eq. 9).
  torch::manual_seed(6);
  NoiseSchedule s{ScheduleConfig{}};
  auto x0 = torch::rand({4, 1, 3, 3}, torch::kFloat64) * 2 - 1;
  auto eps = torch::randn_like(x0);
  const std::vector<int64_t> steps{0, 50, 300, 999};  // SNR from 1e4 to 4e-5 around γ = 5
  const auto t = torch::tensor(steps, torch::kLong);
  const double gamma = 5.0;
  for (auto objective : {Objective::eps, Objective::x0, Objective::v}) {
    GaussianDiffusion d(s, objective, torch::kCPU);
    const auto xt = d.q_sample(x0, t, eps);
    const auto out = d.training_target(x0, eps, t) + 0.1 * torch::randn_like(x0);  // an imperfect network
    const auto x0_hat = d.split_model_output(out, xt, t, /*clip_x0=*/false).x0;
    const auto w = d.min_snr_weights(t, gamma);
    const auto error = (d.training_target(x0, eps, t) - out).pow(2).flatten(1).sum(1);
    const auto x0_error = (x0 - x0_hat).pow(2).flatten(1).sum(1);
    for (int64_t b = 0; b < 4; ++b) {
      const double want = std::min(s.snr[steps[b]], gamma) * x0_error[b].item<double>();
      EXPECT_NEAR(w[b].item<double>() * error[b].item<double>(), want, 1e-6 * want) << to_string(objective) << steps[b];
    }
    EXPECT_TRUE(torch::equal(d.min_snr_weights(t, 0.0), torch::ones({4})));
  }
}

TEST(Loss, WeightedSimpleLossWeighsEachImagesMeanSquaredError) {
  auto out = torch::tensor({1.0, 2.0, 0.0, 0.0}, torch::kFloat64).view({2, 1, 1, 2});
  auto target = torch::zeros_like(out);
  auto w = torch::tensor({0.5, 3.0});
  // image 0: mean(1, 4) = 2.5, image 1: 0 → (0.5·2.5 + 3·0)/2
  EXPECT_NEAR(GaussianDiffusion::loss_simple(out, target, w).item<double>(), 0.625, 1e-12);
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
