// Timesteps drawn by the loss: the bins hold equal shares of the base law q; cold draws are q's with
// weight 1; warm probabilities are q times each bin's root mean square loss, mixed with q, against an
// independent float64 computation; the weighted draws estimate q's objective (Monte Carlo within 5
// standard errors) with the smaller variance that the closed form gives, and stratified batches keep it
// with a steadier batch loss; the history forgets; the state
// round-trips and a damaged one is refused; and a run resumed mid-way draws as one never stopped.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "diffuse/diffusion/loss_aware_timesteps.h"
#include "diffuse/diffusion/timestep_sampling.h"
#include "diffuse/io/safetensors.h"
#include "diffuse/train/trainer.h"
#include "support/error_of.h"
#include "support/small_training.h"
#include "support/temp_dir.h"

using namespace diffuse;
using diffuse::testing::error_of;
using diffuse::testing::quick_config;
using diffuse::testing::TempDir;
using diffuse::testing::tiny_info;

namespace {

torch::Tensor log_snr_normal_law() {
  const NoiseSchedule schedule{ScheduleConfig{}};
  return timestep_probabilities(TimestepSampling{TimestepSamplingKind::log_snr_normal, -2.0, 2.0}, schedule);
}

// A loss for each t, far from flat: what the sampler should learn to prefer.
double synthetic_loss(int64_t t) { return 0.02 + std::exp(-static_cast<double>(t) / 150.0); }

// Records synthetic_loss for every t, `rounds` times, in batches of the whole range.
void feed(LossAwareTimesteps& sampler, int64_t T, int rounds, double scale = 1.0) {
  const auto t = torch::arange(T, torch::kLong);
  auto losses = torch::empty({T}, torch::kFloat64);
  for (int64_t k = 0; k < T; ++k) losses[k] = scale * synthetic_loss(k);
  for (int r = 0; r < rounds; ++r) sampler.record(t, losses);
}

}  // namespace

TEST(LossAwareTimesteps, BinsHoldEqualSharesOfTheBaseLawInOrderOfT) {
  for (const auto& q : {log_snr_normal_law(), torch::full({1000}, 1.0 / 1000, torch::kFloat64)}) {
    LossAwareTimesteps sampler(q, 20);
    std::vector<double> share(20, 0.0);
    int64_t previous = 0;
    for (int64_t t = 0; t < q.size(0); ++t) {
      const int64_t b = sampler.bin_of(t);
      EXPECT_GE(b, previous) << "t " << t;
      previous = b;
      share[b] += q[t].item<double>();
    }
    const double largest = q.max().item<double>();
    for (int b = 0; b < 20; ++b) EXPECT_NEAR(share[b], 1.0 / 20, largest) << "bin " << b;
  }
}

TEST(LossAwareTimesteps, ColdDrawsAreTheBaseLawsWithWeightOne) {
  const auto q = log_snr_normal_law();
  LossAwareTimesteps sampler(q);
  feed(sampler, q.size(0), 1);  // the bins far from q's middle hold ~10 losses, not 32
  EXPECT_FALSE(sampler.warm());
  EXPECT_TRUE(torch::equal(sampler.probabilities(), q));
  auto gen = at::detail::createCPUGenerator(1);
  const auto draw = sampler.sample(4096, gen);
  EXPECT_TRUE(torch::equal(draw.weights, torch::ones({4096})));
}

TEST(LossAwareTimesteps, WarmProbabilitiesAreTheBaseTimesEachBinsRootMeanSquareLoss) {
  const auto q = log_snr_normal_law();
  const int64_t T = q.size(0), bins = 20, history = 32;
  const double mix = 0.1;
  LossAwareTimesteps sampler(q, bins, history, mix);
  feed(sampler, T, 40);
  ASSERT_TRUE(sampler.warm());
  // r_b = √(mean over the bin's last 32 squared losses); each round records the bin's t in order, so the
  // last 32 are the last 32 of the sequence (t of the bin, repeated 40 times).
  std::vector<std::vector<double>> sequence(bins);
  for (int r = 0; r < 40; ++r) {
    for (int64_t t = 0; t < T; ++t) sequence[sampler.bin_of(t)].push_back(synthetic_loss(t));
  }
  std::vector<double> r(bins, 0.0);
  for (int64_t b = 0; b < bins; ++b) {
    const auto& s = sequence[b];
    double sum = 0.0;
    for (size_t k = s.size() - history; k < s.size(); ++k) sum += s[k] * s[k];
    r[b] = std::sqrt(sum / history);
  }
  double z = 0.0;
  for (int64_t t = 0; t < T; ++t) z += q[t].item<double>() * r[sampler.bin_of(t)];
  const auto p = sampler.probabilities();
  EXPECT_NEAR(p.sum().item<double>(), 1.0, 1e-12);
  for (int64_t t = 0; t < T; ++t) {
    const double expected = (1 - mix) * q[t].item<double>() * r[sampler.bin_of(t)] / z + mix * q[t].item<double>();
    ASSERT_NEAR(p[t].item<double>(), expected, 1e-12 * (1 + expected)) << "t " << t;
  }
  // The loss falls with t: the low-noise bins are drawn more often than q draws them, the noisy ones less.
  EXPECT_GT(p[50].item<double>(), q[50].item<double>());
  EXPECT_LT(p[900].item<double>(), q[900].item<double>());
  // Every weight q_t / p_t stays below 1 / u.
  auto gen = at::detail::createCPUGenerator(2);
  EXPECT_LE(sampler.sample(100000, gen).weights.max().item<double>(), 1 / mix + 1e-6);
}

TEST(LossAwareTimesteps, WeightedDrawsEstimateTheBaseObjectiveWithLessVariance) {
  const auto q = log_snr_normal_law();
  const int64_t T = q.size(0), n = 200000;
  LossAwareTimesteps sampler(q);
  feed(sampler, T, 40);
  const auto p = sampler.probabilities();
  // Closed forms: L = Σ q ℓ; Var_q[ℓ] = Σ q ℓ² − L²; Var_p[(q/p) ℓ] = Σ (q²/p) ℓ² − L².
  double objective = 0.0, second_q = 0.0, second_p = 0.0;
  for (int64_t t = 0; t < T; ++t) {
    const double qt = q[t].item<double>(), pt = p[t].item<double>(), l = synthetic_loss(t);
    objective += qt * l;
    second_q += qt * l * l;
    if (pt > 0) second_p += qt * qt / pt * l * l;
  }
  const double variance_q = second_q - objective * objective, variance_p = second_p - objective * objective;
  EXPECT_LT(variance_p, 0.5 * variance_q);
  auto gen = at::detail::createCPUGenerator(5);
  const auto draw = sampler.sample(n, gen);
  auto estimates = torch::empty({n}, torch::kFloat64);
  for (int64_t i = 0; i < n; ++i) {
    estimates[i] = draw.weights[i].item<double>() * synthetic_loss(draw.t[i].item<int64_t>());
  }
  EXPECT_NEAR(estimates.mean().item<double>(), objective, 5 * std::sqrt(variance_p / n));
  EXPECT_NEAR(estimates.var().item<double>(), variance_p, 0.05 * variance_p);
  // the same generator state gives the same draws
  auto again = at::detail::createCPUGenerator(5);
  EXPECT_TRUE(torch::equal(sampler.sample(n, again).t, draw.t));
}

TEST(LossAwareTimesteps, StratifiedDrawsKeepTheObjectiveAndSteadyTheBatchLoss) {
  const auto q = log_snr_normal_law();
  const int64_t T = q.size(0), B = 64, batches = 4000;
  LossAwareTimesteps independent(q), stratified(q, LossAwareTimesteps::kBins, LossAwareTimesteps::kHistory,
                                                LossAwareTimesteps::kMix, /*stratified=*/true);
  feed(independent, T, 40);
  feed(stratified, T, 40);
  ASSERT_TRUE(torch::equal(independent.probabilities(), stratified.probabilities()));
  double objective = 0.0;  // L = Σ q ℓ
  for (int64_t t = 0; t < T; ++t) objective += q[t].item<double>() * synthetic_loss(t);
  // the loss of a batch, mean_i (q/p)_i ℓ_i, for `batches` batches of each sampler
  auto batch_losses = [&](const LossAwareTimesteps& sampler) {
    auto gen = at::detail::createCPUGenerator(9);
    std::vector<double> out;
    for (int64_t b = 0; b < batches; ++b) {
      const auto draw = sampler.sample(B, gen);
      double sum = 0.0;
      for (int64_t i = 0; i < B; ++i) sum += draw.weights[i].item<double>() * synthetic_loss(draw.t[i].item<int64_t>());
      out.push_back(sum / B);
    }
    return torch::tensor(out, torch::kFloat64);
  };
  const auto plain = batch_losses(independent), spread = batch_losses(stratified);
  const double plain_variance = plain.var().item<double>(), spread_variance = spread.var().item<double>();
  EXPECT_NEAR(spread.mean().item<double>(), objective, 5 * std::sqrt(plain_variance / batches));
  EXPECT_NEAR(plain.mean().item<double>(), objective, 5 * std::sqrt(plain_variance / batches));
  EXPECT_LT(spread_variance, 0.5 * plain_variance);
}

TEST(LossAwareTimesteps, TheHistoryKeepsOnlyTheLastLossesOfEachBin) {
  const int64_t T = 100;
  LossAwareTimesteps sampler(torch::full({T}, 1.0 / T, torch::kFloat64), 10, 8);
  feed(sampler, T, 8);       // eight rounds of ℓ: each bin's 10 t, 80 losses
  feed(sampler, T, 1, 3.0);  // one round of 3ℓ: every bin's last 8 losses are its t = 2..9 at 3ℓ
  const auto p = sampler.probabilities();
  LossAwareTimesteps fresh(torch::full({T}, 1.0 / T, torch::kFloat64), 10, 8);
  feed(fresh, T, 1, 3.0);
  EXPECT_TRUE(torch::allclose(p, fresh.probabilities(), 0, 1e-15));
}

TEST(LossAwareTimesteps, TheStateRoundTripsAndADamagedOneIsRefused) {
  const auto q = log_snr_normal_law();
  LossAwareTimesteps sampler(q);
  feed(sampler, q.size(0), 40);
  LossAwareTimesteps restored(q);
  restored.load_state(sampler.state(), "state.safetensors");
  EXPECT_TRUE(restored.warm());
  EXPECT_TRUE(torch::equal(restored.probabilities(), sampler.probabilities()));

  auto refusal = [&](const torch::Tensor& state) {
    LossAwareTimesteps other(q);
    return error_of([&] { other.load_state(state, "state.safetensors"); });
  };
  EXPECT_NE(refusal(torch::zeros({19, 33}, torch::kFloat64)).find("not [20, 33] floats"), std::string::npos);
  EXPECT_NE(refusal(torch::zeros({20, 33}, torch::kLong)).find("not [20, 33] floats"), std::string::npos);
  auto damaged = sampler.state();
  damaged[3][5] = std::nan("");
  EXPECT_NE(refusal(damaged).find("negative, NaN or infinite"), std::string::npos);
  damaged = sampler.state();
  damaged[3][32] = -1.0;
  EXPECT_NE(refusal(damaged).find("not a whole number"), std::string::npos);
  EXPECT_NE(refusal(damaged).find("state.safetensors"), std::string::npos);
}

class LossAwareRun : public ::testing::TestWithParam<bool> {};  // the batch's t stratified or not

TEST_P(LossAwareRun, ResumedMidWayDrawsAsOneNeverStopped) {
  TempDir straight, stopped;
  auto data = load_dataset("mnist", Split::train, DataOptions{0, 200});
  auto config = [&](const TempDir& dir, int64_t steps) {
    auto c = quick_config(dir.str(), steps);
    c.batch_size = 64;  // 20 bins of 32 losses fill in 10 steps: steps 11 on draw by the loss
    c.timestep_sampling.loss_aware = true;
    c.timestep_sampling.stratified = GetParam();
    c.cosine_decay = false;  // the learning rates of the first 12 steps do not depend on the run's length
    return c;
  };
  train(config(straight, 14), tiny_info(data), data, torch::kCPU);
  train(config(stopped, 12), tiny_info(data), data, torch::kCPU);
  auto resume = config(stopped, 14);
  resume.resume = true;
  train(resume, tiny_info(data), data, torch::kCPU);

  auto a = load_safetensors(straight / "train_state.safetensors");
  auto b = load_safetensors(stopped / "train_state.safetensors");
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  const auto& state = a.at("t_importance/state");
  EXPECT_TRUE(torch::equal(state, b.at("t_importance/state")));
  double worst = 0.0;
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    ASSERT_EQ(a.tensors[i].first, b.tensors[i].first);
    if (a.tensors[i].second.is_floating_point())
      worst = std::max(worst, (a.tensors[i].second - b.tensors[i].second).abs().max().item<double>());
  }
  EXPECT_LE(worst, 1e-6);
  // The run's sampler was warm: its draws were not the base law's.
  LossAwareTimesteps check(torch::full({100}, 1.0 / 100, torch::kFloat64));
  check.load_state(state, "train_state");
  EXPECT_TRUE(check.warm());
  EXPECT_FALSE(torch::allclose(check.probabilities(), torch::full({100}, 1.0 / 100, torch::kFloat64)));
}

INSTANTIATE_TEST_SUITE_P(LossAwareTimesteps, LossAwareRun, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "Stratified" : "Independent"; });
