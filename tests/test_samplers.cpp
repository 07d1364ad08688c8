// Samplers: identities between DDPM and DDIM, DDIM's marginal-preserving q_σ (Monte Carlo), and
// one shared suite (timesteps, shapes, seeds) run over every sampler.
#include <gtest/gtest.h>

#include <cctype>
#include <cmath>

#include "diffuse/sampling/ddim.h"
#include "diffuse/sampling/ddpm.h"
#include "diffuse/sampling/sample_loop.h"

using namespace diffuse;

namespace {

GaussianDiffusion make_diffusion() { return GaussianDiffusion(NoiseSchedule(ScheduleConfig{}), Objective::eps, torch::kCPU); }

// The exact prediction for data concentrated at a single point x_0: ε = (x_t − √ᾱ x_0)/√(1 − ᾱ).
Prediction exact_point_prediction(const GaussianDiffusion& d, const torch::Tensor& x0, const torch::Tensor& xt, int64_t t) {
  auto tt = torch::full({xt.size(0)}, t, torch::kLong);
  return Prediction{x0.expand_as(xt), d.predict_eps_from_x0(xt, tt, x0.expand_as(xt))};
}

}  // namespace

TEST(Ddim, EtaOneOnTheFullGridIsDdpmWithPosteriorVariance) {
  auto d = make_diffusion();
  DdimSampler ddim(d.schedule(), TimestepSpacing::leading, /*eta=*/1.0);
  DdpmSampler ddpm(d.schedule(), TimestepSpacing::leading, /*large_variance=*/false);
  torch::manual_seed(4);
  auto x0 = torch::rand({16, 1, 4, 4}) * 2 - 1;
  for (int64_t t : {1, 2, 50, 500, 999}) {
    // σ_t² = β̃_t
    EXPECT_NEAR(std::pow(ddim.sigma(t, t - 1), 2), d.schedule().posterior_variance[t], 1e-12) << "t=" << t;
    auto xt = torch::randn_like(x0);
    Prediction p{x0, torch::randn_like(x0)};  // any consistent pair: use x̂_0 and the ε̂ it implies
    p.eps = d.predict_eps_from_x0(xt, torch::full({16}, t, torch::kLong), x0);
    auto g1 = at::detail::createCPUGenerator(7), g2 = at::detail::createCPUGenerator(7);
    auto a = ddim.step(p, t, t - 1, xt, g1, {}).x_prev;
    auto b = ddpm.step(p, t, t - 1, xt, g2, {}).x_prev;
    const double diff = (a - b).abs().max().item<double>();
    EXPECT_LT(diff, 1e-5) << "t=" << t;
  }
}

TEST(Ddim, StepKeepsTheMarginalOfQ) {
  // With the exact prediction, x_t ~ q(x_t|x_0) must map to x_prev ~ q(x_prev|x_0) =
  // N(√ᾱ_prev x_0, 1 − ᾱ_prev), for any η and any jump t → t_prev.
  auto d = make_diffusion();
  const int64_t N = 200000;
  auto x0 = torch::full({1, 1, 1, 1}, 0.6);
  for (double eta : {0.0, 0.5, 1.0}) {
    for (auto [t, t_prev] : {std::pair<int64_t, int64_t>{999, 500}, {600, 300}, {100, 99}}) {
      torch::manual_seed(5);
      DdimSampler ddim(d.schedule(), TimestepSpacing::leading, eta);
      auto xt = d.q_sample(x0.expand({N, 1, 1, 1}), torch::full({N}, t, torch::kLong), torch::randn({N, 1, 1, 1}));
      auto x_prev = ddim.step(exact_point_prediction(d, x0, xt, t), t, t_prev, xt, c10::nullopt, {}).x_prev;
      const double m_ref = std::sqrt(d.schedule().alpha_bar[t_prev]) * 0.6, v_ref = 1.0 - d.schedule().alpha_bar[t_prev];
      EXPECT_NEAR(x_prev.mean().item<double>(), m_ref, 5 * std::sqrt(v_ref / N)) << "eta " << eta << " t " << t;
      EXPECT_NEAR(x_prev.var().item<double>(), v_ref, 5 * v_ref * std::sqrt(2.0 / N)) << "eta " << eta << " t " << t;
    }
  }
}

TEST(Ddpm, RespacedStepKeepsTheMarginalOfQ) {
  // The posterior with the respaced β'_t = 1 − ᾱ_t/ᾱ_prev is exact on a sub-grid.
  auto d = make_diffusion();
  const int64_t N = 200000, t = 800, t_prev = 400;
  torch::manual_seed(6);
  DdpmSampler ddpm(d.schedule(), TimestepSpacing::leading, false);
  auto x0 = torch::full({1, 1, 1, 1}, -0.5);
  auto xt = d.q_sample(x0.expand({N, 1, 1, 1}), torch::full({N}, t, torch::kLong), torch::randn({N, 1, 1, 1}));
  auto x_prev = ddpm.step(exact_point_prediction(d, x0, xt, t), t, t_prev, xt, c10::nullopt, {}).x_prev;
  const double m_ref = std::sqrt(d.schedule().alpha_bar[t_prev]) * -0.5, v_ref = 1.0 - d.schedule().alpha_bar[t_prev];
  EXPECT_NEAR(x_prev.mean().item<double>(), m_ref, 5 * std::sqrt(v_ref / N));
  EXPECT_NEAR(x_prev.var().item<double>(), v_ref, 5 * v_ref * std::sqrt(2.0 / N));
}

TEST(Ddpm, LastStepReturnsTheCleanPrediction) {
  auto d = make_diffusion();
  DdpmSampler ddpm(d.schedule(), TimestepSpacing::leading, true);
  auto x0 = torch::rand({2, 1, 3, 3});
  auto xt = torch::randn({2, 1, 3, 3});
  auto out = ddpm.step(exact_point_prediction(d, x0, xt, 0), 0, -1, xt, c10::nullopt, {});
  EXPECT_LT((out.x_prev - x0).abs().max().item<double>(), 1e-5);
}

// ---- one suite for every sampler ----
namespace diffuse {
// Readable names in test listings instead of a hex dump of the struct.
void PrintTo(const SamplerConfig& c, std::ostream* os) {
  *os << c.name << " spacing=" << to_string(c.spacing) << " eta=" << c.eta << " large_variance=" << c.ddpm_large_variance;
}
}  // namespace diffuse


class EverySampler : public ::testing::TestWithParam<SamplerConfig> {};

TEST_P(EverySampler, TimestepsAreDescendingInRangeAndOfLengthS) {
  auto d = make_diffusion();
  auto sampler = make_sampler(GetParam(), d.schedule());
  for (int64_t S : {1, 7, 50, 1000}) {
    const auto ts = sampler->timesteps(S);
    ASSERT_EQ(static_cast<int64_t>(ts.size()), S);
    for (size_t i = 0; i < ts.size(); ++i) {
      EXPECT_GE(ts[i], 0);
      EXPECT_LT(ts[i], 1000);
      if (i) EXPECT_LT(ts[i], ts[i - 1]);
    }
  }
}

TEST_P(EverySampler, SameSeedSameImagesAndRightShapes) {
  auto d = make_diffusion();
  auto sampler = make_sampler(GetParam(), d.schedule());
  // A toy denoiser: predicts ε = 0.1 · x_t (any deterministic function works here).
  Denoiser net = [](const torch::Tensor& x, const torch::Tensor&) { return 0.1 * x; };
  auto run = [&](uint64_t seed) {
    auto gen = at::detail::createCPUGenerator(seed);
    auto x_T = torch::randn({3, 2, 5, 5}, gen);
    int64_t calls = 0;
    auto x = sample_loop(d, *sampler, net, x_T, SampleOptions{20, true}, gen, [&](const SampleStep&) { ++calls; });
    EXPECT_EQ(calls, 20);
    return x;
  };
  auto a = run(11), b = run(11), c = run(12);
  EXPECT_EQ(a.sizes(), (std::vector<int64_t>{3, 2, 5, 5}));
  EXPECT_TRUE(torch::equal(a, b));
  EXPECT_FALSE(torch::equal(a, c));
  EXPECT_TRUE(torch::isfinite(a).all().item<bool>());
  EXPECT_LE(a.abs().max().item<double>(), 1.0 + 1e-6);  // last step returns the clipped x̂_0
}

INSTANTIATE_TEST_SUITE_P(Samplers, EverySampler,
                         ::testing::Values(SamplerConfig{"ddpm", TimestepSpacing::leading, 0.0, false},
                                           SamplerConfig{"ddpm", TimestepSpacing::trailing, 0.0, true},
                                           SamplerConfig{"ddim", TimestepSpacing::leading, 0.0, false},
                                           SamplerConfig{"ddim", TimestepSpacing::linspace, 1.0, false},
                                           SamplerConfig{"ddim", TimestepSpacing::trailing, 0.5, false},
                                           SamplerConfig{"euler", TimestepSpacing::leading, 0.0, false},
                                           SamplerConfig{"heun", TimestepSpacing::trailing, 0.0, false},
                                           SamplerConfig{"dpm++2m", TimestepSpacing::linspace, 0.0, false},
                                           SamplerConfig{"ddim", TimestepSpacing::quadratic, 0.0, false},
                                           SamplerConfig{"dpm++2m", TimestepSpacing::quadratic, 0.0, false}),
                         [](const auto& info) {
                           std::string name = info.param.name + "_" + to_string(info.param.spacing) + "_" +
                                              std::to_string(info.index);
                           for (char& c : name)
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           return name;
                         });

TEST(MakeSampler, RejectsUnknownNamesAndNegativeEta) {
  auto d = make_diffusion();
  EXPECT_THROW(make_sampler(SamplerConfig{"euler-a"}, d.schedule()), std::invalid_argument);
  SamplerConfig bad{"ddim"};
  bad.eta = -1;
  EXPECT_THROW(make_sampler(bad, d.schedule()), std::invalid_argument);
}
