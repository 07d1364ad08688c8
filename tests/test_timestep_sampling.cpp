// The timesteps training draws: the log-SNR-normal probabilities against an independent float64
// computation (λ drawn, the nearest step found by a scan), the draws against those probabilities
// (Monte Carlo within 5 standard errors), stratified batches (one draw in each of B equal shares of the
// law, each draw with its marginal, the batch mean far steadier), and the refusals.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "diffuse/diffusion/timestep_sampling.h"

using namespace diffuse;

namespace {

NoiseSchedule linear_schedule() { return NoiseSchedule(ScheduleConfig{}); }

// The step whose log SNR is nearest to λ, by a scan over every step (float64).
int64_t nearest_step(const NoiseSchedule& schedule, double lambda) {
  int64_t best = 0;
  for (int64_t k = 1; k < schedule.timesteps(); ++k) {
    if (std::abs(std::log(schedule.snr[k]) - lambda) < std::abs(std::log(schedule.snr[best]) - lambda)) best = k;
  }
  return best;
}

// Frequencies of the draws in bins of `width` steps.
std::vector<double> binned(const std::vector<int64_t>& steps, int64_t T, int64_t width) {
  std::vector<double> freq(T / width, 0.0);
  for (const auto t : steps) freq[t / width] += 1.0 / steps.size();
  return freq;
}

std::vector<double> binned_probabilities(const torch::Tensor& p, int64_t width) {
  std::vector<double> out(p.size(0) / width, 0.0);
  for (int64_t k = 0; k < p.size(0); ++k) out[k / width] += p[k].item<double>();
  return out;
}

void expect_within_monte_carlo_error(const std::vector<double>& freq, const std::vector<double>& p, int64_t n) {
  for (size_t b = 0; b < p.size(); ++b) {
    const double standard_error = std::sqrt(p[b] * (1 - p[b]) / n);
    EXPECT_NEAR(freq[b], p[b], 5 * standard_error + 1e-9) << "bin " << b;
  }
}

}  // namespace

TEST(TimestepSampling, LogSnrNormalProbabilitiesAreThoseOfTheNearestStepToANormalLambda) {
  const auto schedule = linear_schedule();
  const int64_t T = schedule.timesteps(), n = 200000, width = 50;
  const TimestepSampling sampling{TimestepSamplingKind::log_snr_normal, 1.0, 2.0};
  const auto p = timestep_probabilities(sampling, schedule);
  ASSERT_EQ(p.size(0), T);
  EXPECT_NEAR(p.sum().item<double>(), 1.0, 1e-12);
  EXPECT_GE(p.min().item<double>(), 0.0);
  // the median step is the one whose log SNR is nearest to μ (t falls as λ rises; μ is λ's median)
  const int64_t median = nearest_step(schedule, 1.0);
  EXPECT_LE(p.slice(0, 0, median).sum().item<double>(), 0.5);
  EXPECT_GE(p.slice(0, 0, median + 1).sum().item<double>(), 0.5);
  // λ ~ N(1, 2²) by std::normal_distribution, each mapped to its nearest step by a scan
  std::mt19937_64 rng(7);
  std::normal_distribution<double> normal(1.0, 2.0);
  std::vector<int64_t> steps(n);
  for (auto& t : steps) t = nearest_step(schedule, normal(rng));
  expect_within_monte_carlo_error(binned(steps, T, width), binned_probabilities(p, width), n);
}

TEST(TimestepSampling, DrawsFollowTheirProbabilities) {
  const auto schedule = linear_schedule();
  const int64_t T = schedule.timesteps(), n = 200000, width = 50;
  for (const auto& sampling : {TimestepSampling{TimestepSamplingKind::uniform, 0.0, 2.0},
                               TimestepSampling{TimestepSamplingKind::log_snr_normal, 0.0, 2.0},
                               TimestepSampling{TimestepSamplingKind::log_snr_normal, 2.4, 2.4}}) {
    SCOPED_TRACE(to_string(sampling.kind) + " " + std::to_string(sampling.log_snr_mean));
    auto gen = at::detail::createCPUGenerator(3);
    const auto t = sample_timesteps(sampling, schedule, n, gen);
    ASSERT_EQ(t.scalar_type(), torch::kLong);
    EXPECT_GE(t.min().item<int64_t>(), 0);
    EXPECT_LT(t.max().item<int64_t>(), T);
    const std::vector<int64_t> steps(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + n);
    expect_within_monte_carlo_error(binned(steps, T, width),
                                    binned_probabilities(timestep_probabilities(sampling, schedule), width), n);
    // the same generator state gives the same draws
    auto again = at::detail::createCPUGenerator(3);
    EXPECT_TRUE(torch::equal(sample_timesteps(sampling, schedule, n, again), t));
  }
  const auto uniform = timestep_probabilities(TimestepSampling{}, schedule);
  EXPECT_TRUE(torch::allclose(uniform, torch::full({T}, 1.0 / T, torch::kFloat64)));
}

TEST(TimestepSampling, RefusesAWidthThatIsNotPositiveAndAMeanThatIsNotFinite) {
  const auto schedule = linear_schedule();
  for (const auto& bad : {TimestepSampling{TimestepSamplingKind::log_snr_normal, 0.0, 0.0},
                          TimestepSampling{TimestepSamplingKind::log_snr_normal, 0.0, -1.0},
                          TimestepSampling{TimestepSamplingKind::log_snr_normal, 0.0, std::nan("")},
                          TimestepSampling{TimestepSamplingKind::log_snr_normal, std::nan(""), 2.0},
                          TimestepSampling{TimestepSamplingKind::log_snr_normal, INFINITY, 2.0}}) {
    EXPECT_THROW(sample_timesteps(bad, schedule, 4), std::invalid_argument);
    EXPECT_THROW(timestep_probabilities(bad, schedule), std::invalid_argument);
  }
  EXPECT_THROW(timestep_sampling_from_string("lognormal"), std::invalid_argument);
  EXPECT_EQ(timestep_sampling_from_string(to_string(TimestepSamplingKind::log_snr_normal)),
            TimestepSamplingKind::log_snr_normal);
}

TEST(TimestepSampling, StratifiedBatchesHoldOneDrawInEachEqualShareOfTheLaw) {
  const auto schedule = linear_schedule();
  const int64_t T = schedule.timesteps(), B = 64, batches = 3000;
  for (auto sampling : {TimestepSampling{TimestepSamplingKind::uniform, 0.0, 2.0},
                        TimestepSampling{TimestepSamplingKind::log_snr_normal, -2.0, 2.0}}) {
    SCOPED_TRACE(to_string(sampling.kind));
    sampling.stratified = true;
    const auto p = timestep_probabilities(sampling, schedule);
    std::vector<double> cdf(T);  // F(k) = Σ_{j≤k} p_j, float64
    double sum = 0.0;
    for (int64_t k = 0; k < T; ++k) cdf[k] = sum += p[k].item<double>();
    auto gen = at::detail::createCPUGenerator(11);
    std::vector<int64_t> all, first;
    double mean_of_batch_means = 0.0, square_of_batch_means = 0.0;
    for (int64_t b = 0; b < batches; ++b) {
      const auto t = sample_timesteps(sampling, schedule, B, gen);
      ASSERT_EQ(t.size(0), B);
      std::vector<int64_t> steps(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + B);
      all.insert(all.end(), steps.begin(), steps.end());
      first.push_back(steps[0]);
      const double batch_mean = t.to(torch::kFloat64).mean().item<double>();
      mean_of_batch_means += batch_mean / batches;
      square_of_batch_means += batch_mean * batch_mean / batches;
      // sorted, the i-th draw is F⁻¹ of a point in [i/B, (i+1)/B): F(t_i − 1) < (i+1)/B and F(t_i) ≥ i/B
      std::sort(steps.begin(), steps.end());
      for (int64_t i = 0; i < B; ++i) {
        const int64_t k = steps[i];
        ASSERT_LT(k > 0 ? cdf[k - 1] : 0.0, double(i + 1) / B + 1e-12) << "draw " << i << " of batch " << b;
        ASSERT_GE(cdf[k], double(i) / B - 1e-12) << "draw " << i << " of batch " << b;
      }
    }
    // each draw alone has the law's marginal (also the first of each batch: the order is random)
    expect_within_monte_carlo_error(binned(all, T, 50), binned_probabilities(p, 50), batches * B);
    expect_within_monte_carlo_error(binned(first, T, 250), binned_probabilities(p, 250), batches);
    // the batch's mean t varies far less than that of B independent draws: Var[t] / B
    double mean_t = 0.0, square_t = 0.0;
    for (int64_t k = 0; k < T; ++k) {
      mean_t += k * p[k].item<double>();
      square_t += double(k) * k * p[k].item<double>();
    }
    const double independent_variance = (square_t - mean_t * mean_t) / B;
    EXPECT_LT(square_of_batch_means - mean_of_batch_means * mean_of_batch_means, 0.05 * independent_variance);
  }
  // the uniform law over T steps in a batch of T: every step exactly once
  TimestepSampling uniform;
  uniform.stratified = true;
  auto t = sample_timesteps(uniform, schedule, T);
  EXPECT_TRUE(torch::equal(std::get<0>(t.sort()), torch::arange(T, torch::kLong)));
  // steps of probability 0 are never drawn
  auto p = torch::zeros({10}, torch::kFloat64);
  p[3] = 0.25;
  p[7] = 0.75;
  const auto draws = stratified_timesteps(p, 1000);
  EXPECT_EQ(((draws == 3).sum() + (draws == 7).sum()).item<int64_t>(), 1000);
  EXPECT_EQ((draws == 3).sum().item<int64_t>(), 250);
}
