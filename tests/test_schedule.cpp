// Schedules against independent long-double recomputation, and sampler timesteps against the
// lists diffusers' DDIMScheduler (steps_offset = 0) produces.
#include <gtest/gtest.h>

#include <cmath>

#include "diffuse/schedule/noise_schedule.h"
#include "diffuse/schedule/timestep_spacing.h"

using namespace diffuse;

namespace {
void expect_rel_near(double actual, long double expected, double rel, const std::string& what) {
  const double tol = 1e-300 + rel * std::fabs(static_cast<double>(expected));
  EXPECT_NEAR(actual, static_cast<double>(expected), tol) << what;
}
}  // namespace

TEST(Schedule, LinearEndpointsAndTablesMatchALongDoubleRecomputation) {
  NoiseSchedule s(ScheduleConfig{BetaSchedule::linear, 1000, 1e-4, 0.02});
  ASSERT_EQ(s.timesteps(), 1000);
  EXPECT_DOUBLE_EQ(s.betas.front(), 1e-4);
  EXPECT_DOUBLE_EQ(s.betas.back(), 0.02);
  long double prod = 1.0L;
  for (int i = 0; i < 1000; ++i) {
    const long double beta = 1e-4L + (0.02L - 1e-4L) * i / 999.0L;
    const long double prev = prod;
    prod *= 1.0L - beta;
    const std::string at = "t=" + std::to_string(i + 1);
    expect_rel_near(s.betas[i], beta, 1e-13, "beta " + at);
    expect_rel_near(s.alpha_bar[i], prod, 1e-12, "alpha_bar " + at);
    expect_rel_near(s.alpha_bar_prev[i], prev, 1e-12, "alpha_bar_prev " + at);
    expect_rel_near(s.posterior_variance[i], beta * (1 - prev) / (1 - prod), 1e-10, "posterior_variance " + at);
    expect_rel_near(s.posterior_mean_coef1[i], beta * std::sqrt(prev) / (1 - prod), 1e-10, "coef1 " + at);
    expect_rel_near(s.posterior_mean_coef2[i], (1 - prev) * std::sqrt(1 - beta) / (1 - prod), 1e-10, "coef2 " + at);
    expect_rel_near(s.snr[i], prod / (1 - prod), 1e-10, "snr " + at);
  }
  EXPECT_EQ(s.posterior_variance[0], 0.0);                                  // β̃_1 = 0
  EXPECT_DOUBLE_EQ(s.posterior_log_variance_clipped[0], std::log(s.posterior_variance[1]));
}

TEST(Schedule, PosteriorCoefficientsSumToOneWhenXtEqualsX0Scaled) {
  // For x_0 = x and x_t = √ᾱ_t x (no noise), μ̃ must be √ᾱ_{t−1} x: c1 + c2 √ᾱ_t = √ᾱ_{t−1}.
  for (auto kind : {BetaSchedule::linear, BetaSchedule::cosine, BetaSchedule::scaled_linear}) {
    NoiseSchedule s(ScheduleConfig{kind, 500});
    for (int64_t i = 0; i < s.timesteps(); ++i) {
      EXPECT_NEAR(s.posterior_mean_coef1[i] + s.posterior_mean_coef2[i] * s.sqrt_alpha_bar[i],
                  std::sqrt(s.alpha_bar_prev[i]), 1e-12)
          << to_string(kind) << " t=" << i + 1;
    }
  }
}

TEST(Schedule, CosineFollowsItsAlphaBarCurveAndIsClipped) {
  const int T = 1000;
  const double s = 0.008;
  NoiseSchedule sched(ScheduleConfig{BetaSchedule::cosine, T});
  auto f = [&](double t) { return std::pow(std::cos((t / T + s) / (1 + s) * M_PI / 2), 2); };
  for (int t = 1; t <= 900; ++t) EXPECT_NEAR(sched.alpha_bar[t - 1], f(t) / f(0), 1e-12) << "t=" << t;
  EXPECT_DOUBLE_EQ(sched.betas.back(), 0.999);  // the last β is clipped
}

TEST(Schedule, ScaledLinearIsASquaredLinspaceOfRoots) {
  NoiseSchedule s(ScheduleConfig{BetaSchedule::scaled_linear, 1000, 0.00085, 0.012});
  EXPECT_NEAR(s.betas.front(), 0.00085, 1e-15);
  EXPECT_NEAR(s.betas.back(), 0.012, 1e-15);
  const double mid = std::sqrt(0.00085) + (std::sqrt(0.012) - std::sqrt(0.00085)) * 500 / 999;
  EXPECT_NEAR(s.betas[500], mid * mid, 1e-15);
}

TEST(Schedule, RejectsBadInput) {
  EXPECT_THROW(make_betas(ScheduleConfig{BetaSchedule::linear, 0}), std::invalid_argument);
  EXPECT_THROW(make_betas(ScheduleConfig{BetaSchedule::linear, 10, 0.5, 1.5}), std::invalid_argument);
  EXPECT_THROW(beta_schedule_from_string("quadratic"), std::invalid_argument);
}

TEST(TimestepSpacing, MatchesDiffusersDdimScheduler) {
  using V = std::vector<int64_t>;
  // diffusers DDIMScheduler(num_train_timesteps=1000, steps_offset=0, timestep_spacing=...).set_timesteps(S)
  EXPECT_EQ(spaced_timesteps(1000, 10, TimestepSpacing::leading), (V{900, 800, 700, 600, 500, 400, 300, 200, 100, 0}));
  EXPECT_EQ(spaced_timesteps(1000, 10, TimestepSpacing::trailing), (V{999, 899, 799, 699, 599, 499, 399, 299, 199, 99}));
  EXPECT_EQ(spaced_timesteps(1000, 10, TimestepSpacing::linspace), (V{999, 888, 777, 666, 555, 444, 333, 222, 111, 0}));
  EXPECT_EQ(spaced_timesteps(1000, 3, TimestepSpacing::trailing), (V{999, 666, 332}));
  // linspace(0, 999, 3) = [0, 499.5, 999]: numpy rounds the half to the even 500
  EXPECT_EQ(spaced_timesteps(1000, 3, TimestepSpacing::linspace), (V{999, 500, 0}));
  EXPECT_EQ(spaced_timesteps(1000, 3, TimestepSpacing::leading), (V{666, 333, 0}));
}

// The DDIM paper's code: seq = [int(s) for s in np.linspace(0, np.sqrt(0.8 T), S) ** 2], 0-based.
TEST(TimestepSpacing, QuadraticIsTheDdimPapersSelectionWithoutRepeats) {
  using V = std::vector<int64_t>;
  auto ascending = [](int64_t T, int64_t S) {
    auto ts = spaced_timesteps(T, S, TimestepSpacing::quadratic);
    return V(ts.rbegin(), ts.rend());
  };
  EXPECT_EQ(ascending(1000, 10), (V{0, 9, 39, 88, 158, 246, 355, 483, 632, 800}));
  EXPECT_EQ(ascending(1000, 20),
            (V{0, 2, 8, 19, 35, 55, 79, 108, 141, 179, 221, 268, 319, 374, 434, 498, 567, 640, 718, 800}));
  // numpy gives 0, 0, 1, 2, 5, … at S = 50 (2.9999… truncates to 2): the repeats are raised by one each
  const auto fifty = ascending(1000, 50);
  EXPECT_EQ(V(fifty.begin(), fifty.begin() + 6), (V{0, 1, 2, 3, 5, 8}));
  EXPECT_EQ(fifty.back(), 800);
  // every S ≤ T: S distinct indices in [0, T − 1], the largest ⌊0.8 T⌋ (one less where √(0.8 T)² rounds
  // below it) unless the raising pushed it up
  for (int64_t T = 1; T <= 80; ++T) {
    for (int64_t S = 1; S <= T; ++S) {
      const auto ts = spaced_timesteps(T, S, TimestepSpacing::quadratic);
      ASSERT_EQ(static_cast<int64_t>(ts.size()), S) << T << " " << S;
      EXPECT_EQ(ts.back(), 0) << T << " " << S;
      EXPECT_LE(ts.front(), T - 1) << T << " " << S;
      if (S > 1) EXPECT_GE(ts.front(), static_cast<int64_t>(0.8 * T) - 1) << T << " " << S;
      for (size_t j = 1; j < ts.size(); ++j) EXPECT_LT(ts[j], ts[j - 1]) << T << " " << S;
    }
  }
}

TEST(TimestepSpacing, NamesRoundTripAndUnknownOnesAreRefusedListingTheKnown) {
  for (const auto& name : timestep_spacing_names()) EXPECT_EQ(to_string(timestep_spacing_from_string(name)), name);
  try {
    timestep_spacing_from_string("cubic");
    FAIL() << "cubic accepted";
  } catch (const std::invalid_argument& e) {
    for (const auto& name : timestep_spacing_names()) EXPECT_NE(std::string(e.what()).find(name), std::string::npos);
  }
}

TEST(TimestepSpacing, FullGridIsTheSameForEverySpacingAndStepsAreValidated) {
  for (const auto& name : timestep_spacing_names()) {
    const auto sp = timestep_spacing_from_string(name);
    const auto ts = spaced_timesteps(50, 50, sp);
    ASSERT_EQ(ts.size(), 50u);
    for (int64_t j = 0; j < 50; ++j) EXPECT_EQ(ts[j], 49 - j) << to_string(sp);
    EXPECT_THROW(spaced_timesteps(50, 51, sp), std::invalid_argument);
    EXPECT_THROW(spaced_timesteps(50, 0, sp), std::invalid_argument);
  }
}
