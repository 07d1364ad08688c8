// The ELBO's pieces against independent computations: KL by Monte Carlo, the decoder's 256 bin
// probabilities summing to one, and the bound for a model whose prediction is exact.
#include <gtest/gtest.h>

#include <cmath>

#include "diffuse/diffusion/elbo.h"
#include "diffuse/diffusion/losses.h"

using namespace diffuse;

TEST(NormalKl, MatchesAMonteCarloEstimate) {
  torch::manual_seed(0);
  const double m1 = 0.3, v1 = 0.5, m2 = -0.2, v2 = 1.7;
  const int64_t N = 400000;
  auto x = m1 + std::sqrt(v1) * torch::randn({N}, torch::kFloat64);
  // KL = E_{x~p}[log p(x) − log q(x)]
  auto log_p = -0.5 * (std::log(2 * M_PI * v1) + (x - m1).pow(2) / v1);
  auto log_q = -0.5 * (std::log(2 * M_PI * v2) + (x - m2).pow(2) / v2);
  auto diff = log_p - log_q;
  const double mc = diff.mean().item<double>(), se = diff.std().item<double>() / std::sqrt(double(N));
  auto t = [](double v) { return torch::tensor({v}, torch::kFloat64); };
  const double kl = normal_kl(t(m1), t(std::log(v1)), t(m2), t(std::log(v2))).item<double>();
  EXPECT_NEAR(kl, mc, 5 * se) << "analytic " << kl << " vs Monte Carlo " << mc << " ± " << se;
  EXPECT_NEAR(normal_kl(t(m1), t(0.1), t(m1), t(0.1)).item<double>(), 0.0, 1e-15);
}

TEST(Decoder, TheProbabilitiesOfThe256BinsSumToOne) {
  auto bins = torch::arange(256, torch::kFloat64) / 127.5 - 1.0;  // pixel values in [−1, 1]
  for (double mean : {-1.2, -0.3, 0.0, 0.77, 1.0}) {
    for (double log_scale : {-6.0, -3.0, -1.0, 0.5}) {
      auto logp = discretized_gaussian_log_likelihood(bins, torch::full_like(bins, mean), torch::full_like(bins, log_scale));
      EXPECT_NEAR(logp.exp().sum().item<double>(), 1.0, 1e-9) << "mean " << mean << " log_scale " << log_scale;
    }
  }
  // A sharp decoder centred on a pixel puts nearly all mass in that pixel's bin.
  auto x = torch::tensor({10.0 / 127.5 - 1.0}, torch::kFloat64);
  EXPECT_NEAR(discretized_gaussian_log_likelihood(x, x, torch::full_like(x, -8.0)).item<double>(), 0.0, 1e-9);
}

TEST(Elbo, PriorTermIsTheKlOfTheLastMarginal) {
  NoiseSchedule s{ScheduleConfig{}};
  auto x0 = torch::tensor({-1.0, 0.0, 0.5, 1.0}, torch::kFloat64).view({1, 1, 2, 2});
  const double ab = s.alpha_bar.back();
  double expected = 0.0;
  for (double v : {-1.0, 0.0, 0.5, 1.0}) {  // ½(−1 − log(1−ᾱ) + (1−ᾱ) + ᾱ x²) per pixel
    expected += 0.5 * (-1.0 - std::log(1.0 - ab) + (1.0 - ab) + ab * v * v);
  }
  expected /= 4.0 * std::log(2.0);
  EXPECT_NEAR(prior_bpd(s, x0).item<double>(), expected, 1e-15);
}

TEST(Elbo, ConsistencyTermsVanishForAnExactPredictionWithThePosteriorVariance) {
  // If the network's x̂_0 is the true x_0, μ_θ = μ̃_t and (with σ² = β̃) every L_{t−1} is 0;
  // with σ² = β it is the variance mismatch KL(N(0,β̃) ‖ N(0,β)) > 0, the same for every pixel.
  NoiseSchedule s{ScheduleConfig{}};
  GaussianDiffusion d(s, Objective::eps, torch::kCPU);
  torch::manual_seed(1);
  auto x0 = torch::randint(0, 256, {2, 1, 4, 4}).to(torch::kFloat64) / 127.5 - 1.0;
  for (int64_t index : {1, 10, 500, 999}) {
    auto t = torch::full({2}, index, torch::kLong);
    auto x_t = d.q_sample(x0.to(torch::kFloat32), t, torch::randn({2, 1, 4, 4})).to(torch::kFloat64);
    Prediction exact{x0, torch::Tensor()};
    EXPECT_NEAR(vb_term_bpd(d, ModelVariance::posterior, x0, x_t, t, exact).abs().max().item<double>(), 0.0, 1e-12);
    const double lv_post = s.posterior_log_variance_clipped[index], lv_beta = std::log(s.betas[index]);
    const double mismatch = 0.5 * (-1.0 + lv_beta - lv_post + std::exp(lv_post - lv_beta)) / std::log(2.0);
    auto beta_terms = vb_term_bpd(d, ModelVariance::beta, x0, x_t, t, exact);
    EXPECT_NEAR(beta_terms[0].item<double>(), mismatch, 1e-12) << "t=" << index + 1;
    EXPECT_GT(mismatch, 0.0);
  }
}

TEST(Elbo, DecoderTermOfAnExactPredictionIsTheMassOfTheTrueBin) {
  // At t = 1 an exact x̂_0 gives μ = c1 x_0 + c2 x_1 = x_0 (c2 = 0 at t = 1) with σ² = β̃_2:
  // L_0 = −log₂ of the N(x_0, β̃_2) mass of x_0's bin (or its open half-line at ±1).
  NoiseSchedule s{ScheduleConfig{}};
  GaussianDiffusion d(s, Objective::eps, torch::kCPU);
  auto x0 = torch::tensor({-1.0, 100.0 / 127.5 - 1.0, 1.0}, torch::kFloat64).view({3, 1, 1, 1});
  auto x1 = x0 * s.sqrt_alpha_bar[0];
  auto l0 = vb_term_bpd(d, ModelVariance::posterior, x0, x1, torch::zeros({3}, torch::kLong), Prediction{x0, torch::Tensor()});
  const double sigma = std::sqrt(s.posterior_variance[1]);
  auto Phi = [](double z) { return 0.5 * std::erfc(-z / std::sqrt(2.0)); };
  const double inner = Phi(1.0 / 255.0 / sigma) - Phi(-1.0 / 255.0 / sigma);
  const double edge = Phi(1.0 / 255.0 / sigma);
  EXPECT_NEAR(l0[0].item<double>(), -std::log2(edge), 1e-9);
  EXPECT_NEAR(l0[1].item<double>(), -std::log2(inner), 1e-9);
  EXPECT_NEAR(l0[2].item<double>(), -std::log2(edge), 1e-9);
}

TEST(Elbo, ConsistencyTermIsTheWeightedEpsilonError) {
  // L_{t−1} = w(t) · mean‖ε − ε_θ‖² / ln 2 with w(t) = β_t² / (2σ_t² α_t (1 − ᾱ_t)), σ² = β̃_t:
  // the weighting that --loss vlb trains with (DDPM eq. 12).
  NoiseSchedule s{ScheduleConfig{}};
  GaussianDiffusion d(s, Objective::eps, torch::kCPU);
  torch::manual_seed(2);
  auto x0 = (torch::rand({3, 1, 5, 5}) * 2 - 1).to(torch::kFloat64);
  auto eps = torch::randn({3, 1, 5, 5}, torch::kFloat64);
  auto eps_model = eps + 0.1 * torch::randn_like(eps);
  auto t = torch::tensor({1, 200, 900}, torch::kLong);
  // Float64 x_t and x̂_0 through the public functions (float64 tables for float64 x).
  const auto x_t = d.q_sample(x0, t, eps), x0_pred = d.predict_x0_from_eps(x_t, t, eps_model);
  std::vector<double> expected(3);
  for (int b = 0; b < 3; ++b) {
    const int64_t i = t[b].item<int64_t>();
    const double w = s.betas[i] * s.betas[i] / (2 * s.posterior_variance[i] * s.alphas[i] * (1 - s.alpha_bar[i]));
    EXPECT_NEAR(eps_form_vlb_weight(s, ModelVariance::posterior, i), w, 1e-12 * w) << "index " << i;
    expected[b] = eps_form_vlb_weight(s, ModelVariance::posterior, i) * (eps[b] - eps_model[b]).pow(2).mean().item<double>() /
                  std::log(2.0);
  }
  auto terms = vb_term_bpd(d, ModelVariance::posterior, x0, x_t, t, Prediction{x0_pred, eps_model});
  for (int b = 0; b < 3; ++b) EXPECT_NEAR(terms[b].item<double>(), expected[b], 1e-9 * expected[b]) << "index " << t[b].item<int64_t>();
}
