// evaluate_nll: the Monte-Carlo estimate agrees with the exact sum, and for data at a single
// point with an exact (oracle) ε-prediction the bound behaves as theory says.
#include <gtest/gtest.h>

#include <cmath>

#include "diffuse/eval/nll.h"

using namespace diffuse;

namespace {
Dataset constant_images(int64_t n, uint8_t value) {
  Dataset d;
  d.name = "constant";
  d.images = torch::full({n, 1, 4, 4}, value, torch::kUInt8);
  d.labels = torch::zeros({n}, torch::kLong);
  return d;
}
}  // namespace

TEST(Nll, OracleOnASinglePointHasNoConsistencyTermsAndABoundAboveZero) {
  GaussianDiffusion d(NoiseSchedule(ScheduleConfig{BetaSchedule::linear, 200}), Objective::eps, torch::kCPU);
  auto data = constant_images(8, 200);
  auto x0 = torch::full({1, 1, 4, 4}, 200 / 127.5 - 1.0);
  // The exact ε for a point mass at x_0: ε = (x_t − √ᾱ_t x_0)/√(1 − ᾱ_t).
  Denoiser oracle = [&](const torch::Tensor& x_t, const torch::Tensor& t) {
    return d.predict_eps_from_x0(x_t, t, x0.expand_as(x_t));
  };
  NllOptions o;
  o.exact = true;
  o.progress = false;
  auto r = evaluate_nll(oracle, d, data, o);
  EXPECT_NEAR(r.terms.mean, 0.0, 1e-6);  // float32 x_t: tiny rounding only
  EXPECT_GT(r.total.mean, 0.0);          // the true NLL of a point mass is 0 bits; the bound is above
  EXPECT_NEAR(r.total.mean, r.prior.mean + r.terms.mean + r.decoder.mean, 1e-12);
  // L_0 = −log₂ of the N(x_0, β̃_2) mass of x_0's bin
  const auto& s = d.schedule();
  const double z = (1.0 / 255.0) / std::sqrt(s.posterior_variance[1]);
  const double mass = std::erf(z / std::sqrt(2.0));
  EXPECT_NEAR(r.decoder.mean, -std::log2(mass), 1e-4);
}

TEST(Nll, MonteCarloAgreesWithTheExactSum) {
  // An imperfect "network" (ε̂ = 0.5 x_t) so that the consistency terms are far from zero.
  GaussianDiffusion d(NoiseSchedule(ScheduleConfig{BetaSchedule::linear, 100}), Objective::eps, torch::kCPU);
  torch::manual_seed(0);
  Dataset data = constant_images(64, 0);
  data.images = torch::randint(0, 256, {64, 1, 4, 4}).to(torch::kUInt8);
  Denoiser net = [](const torch::Tensor& x_t, const torch::Tensor&) { return 0.5 * x_t; };
  NllOptions o;
  o.progress = false;
  o.exact = true;
  auto exact = evaluate_nll(net, d, data, o);
  o.exact = false;
  o.t_samples = 50;
  o.seed = 3;
  auto mc = evaluate_nll(net, d, data, o);
  std::printf("exact %.4f  monte carlo %.4f ± %.4f bits/dim\n", exact.total.mean, mc.total.mean, mc.total.standard_error);
  EXPECT_GT(exact.terms.mean, 0.1);
  EXPECT_NEAR(mc.total.mean, exact.total.mean, 4 * mc.total.standard_error + 4 * exact.total.standard_error);
  EXPECT_NEAR(mc.prior.mean, exact.prior.mean, 1e-12);  // exact in both
  EXPECT_EQ(mc.network_evaluations, 51);
  EXPECT_EQ(exact.network_evaluations, 100);
}
