// The power-function EMA and its post-hoc reconstruction: σ_rel against the profile's own moments
// and the paper's pairs, the discrete updates against the profile's integrals, the inner products
// against quadrature, the rebuilt EMA against one tracked directly; then through train() and resume.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "diffuse/io/safetensors.h"
#include "diffuse/train/ema.h"
#include "diffuse/train/ema_snapshots.h"
#include "diffuse/train/power_ema.h"
#include "diffuse/train/trainer.h"
#include "support/error_of.h"
#include "support/small_training.h"
#include "support/temp_dir.h"

using namespace diffuse;
using diffuse::testing::error_of;
using diffuse::testing::tiny_info;
using diffuse::testing::TempDir;

namespace {

// ∫_0^T f(τ) dτ by the midpoint rule on n cells (the profiles are smooth inside [0, t]).
template <class F>
double integrate(F f, double T, int n) {
  double sum = 0.0;
  for (int i = 0; i < n; ++i) sum += f((i + 0.5) * T / n);
  return sum * T / n;
}

double profile(const PowerProfile& p, double tau) {
  return tau <= p.t ? (p.gamma + 1.0) * std::pow(tau, p.gamma) / std::pow(p.t, p.gamma + 1.0) : 0.0;
}

// A "model" of one float64 vector for Ema::update.
struct Vector {
  torch::nn::ParameterList params;
  explicit Vector(int64_t n) { params->append(torch::zeros({n}, torch::kFloat64)); }
  torch::Tensor value() const { return params->parameters()[0].detach(); }
  void set(const torch::Tensor& v) {
    torch::NoGradGuard no_grad;
    params->parameters()[0].copy_(v);
  }
};

}  // namespace

TEST(PowerEma, SigmaRelIsTheProfilesRelativeStandardDeviation) {
  for (const double gamma : {0.0, 0.5, 3.0, 6.94, 16.97, 100.0}) {
    const PowerProfile p{1.0, gamma};
    const auto density = [&](double tau) { return profile(p, tau); };
    const double mass = integrate(density, 1.0, 200000);
    const double mean = integrate([&](double tau) { return tau * density(tau); }, 1.0, 200000);
    const double second = integrate([&](double tau) { return tau * tau * density(tau); }, 1.0, 200000);
    EXPECT_NEAR(mass, 1.0, 1e-6) << gamma;
    EXPECT_NEAR(power_ema_sigma_rel(gamma), std::sqrt(second - mean * mean), 1e-6) << gamma;
    EXPECT_NEAR(power_ema_gamma(power_ema_sigma_rel(gamma)), gamma, 1e-9 * (1.0 + gamma)) << gamma;
  }
  // The paper's pair: σ_rel 0.05 and 0.10 are γ ≈ 16.97 and 6.94, the largest roots of the cubic.
  EXPECT_NEAR(power_ema_gamma(0.05), 16.97, 0.005);
  EXPECT_NEAR(power_ema_gamma(0.10), 6.94, 0.005);
  for (const double s : {0.01, 0.05, 0.1, 0.2}) {
    const double g = power_ema_gamma(s), k = 1.0 / (s * s);
    EXPECT_NEAR(g * g * g + 7 * g * g + (16 - k) * g + (12 - k), 0.0, 1e-7 * k * g) << s;
  }
  EXPECT_NEAR(power_ema_gamma(power_ema_max_sigma_rel()), 0.0, 1e-12);
  EXPECT_THROW(power_ema_gamma(0.0), std::invalid_argument);
  EXPECT_THROW(power_ema_gamma(0.3), std::invalid_argument);
  EXPECT_THROW(power_ema_gamma(NAN), std::invalid_argument);
  EXPECT_THROW(Ema::power(-0.5), std::invalid_argument);
}

TEST(PowerEma, EachStepGetsTheProfilesIntegralOverItsInterval) {
  // θ_k = e_k (one-hot) at update k = 1..T: after T updates the EMA's entry k is the weight θ_k got,
  // which must be ∫_{k−1}^{k} p_{T,γ} = (k^(γ+1) − (k−1)^(γ+1)) / T^(γ+1).
  const int64_t T = 40;
  for (const double gamma : {0.0, 2.5, 16.97}) {
    Vector model(T), averaged(T);
    Ema ema = Ema::power(gamma);
    for (int64_t k = 1; k <= T; ++k) {
      model.set(torch::zeros({T}, torch::kFloat64).index_fill_(0, torch::tensor({k - 1}), 1.0));
      ema.update(*averaged.params, *model.params);
    }
    const auto w = averaged.value();
    for (int64_t k = 1; k <= T; ++k) {
      const double expected = (std::pow(k, gamma + 1) - std::pow(k - 1, gamma + 1)) / std::pow(T, gamma + 1);
      EXPECT_NEAR(w[k - 1].item<double>(), expected, 1e-12) << "γ " << gamma << " k " << k;
    }
    EXPECT_NEAR(w.sum().item<double>(), 1.0, 1e-12);
  }
}

TEST(PowerEma, ProfileInnerProductsMatchQuadrature) {
  const std::vector<PowerProfile> profiles{{100, 0.0}, {100, 6.94}, {250, 16.97}, {37, 3.0}, {250, 0.5}};
  for (const auto& a : profiles) {
    for (const auto& b : profiles) {
      const double numeric =
          integrate([&](double tau) { return profile(a, tau) * profile(b, tau); }, std::min(a.t, b.t), 400000);
      EXPECT_NEAR(power_profile_dot(a, b), numeric, 1e-6 * numeric)
          << a.t << "," << a.gamma << " " << b.t << "," << b.gamma;
    }
  }
}

TEST(PosthocEma, ASnapshotsOwnProfileIsRebuiltFromItAlone) {
  const std::vector<PowerProfile> snapshots{{100, 6.94}, {200, 6.94}, {200, 16.97}, {300, 6.94}, {300, 16.97}};
  const auto fit = posthoc_ema_weights(snapshots, {200, 16.97});
  ASSERT_EQ(fit.weights.size(), snapshots.size());
  for (size_t i = 0; i < snapshots.size(); ++i) EXPECT_NEAR(fit.weights[i], i == 2 ? 1.0 : 0.0, 1e-6) << i;
  EXPECT_LT(fit.relative_error, 1e-10);
  // A profile no snapshot has is fitted, not matched: some error, weights summing to about 1.
  const auto between = posthoc_ema_weights(snapshots, {300, power_ema_gamma(0.075)});
  double total = 0.0;
  for (double x : between.weights) total += x;
  EXPECT_NEAR(total, 1.0, 0.05);  // least squares, not constrained to sum to 1
  EXPECT_GT(between.relative_error, 0.0);
  EXPECT_LT(between.relative_error, 0.01);
  EXPECT_NE(error_of([] { posthoc_ema_weights({}, {1, 1}); }).find("no snapshots"), std::string::npos);
  EXPECT_NE(error_of([] { posthoc_ema_weights({{0, 1}}, {1, 1}); }).find("t > 0"), std::string::npos);
}

TEST(PosthocEma, RebuildsAnEmaThatWasNeverTrackedFromTwoTracksSnapshots) {
  // Weights on a random walk with a drift, T steps; two power EMAs (σ_rel 0.05, 0.10) snapshotted
  // every 50 steps; the EMA of σ_rel 0.07, tracked directly, is what the snapshots must rebuild.
  torch::manual_seed(0);
  const int64_t T = 1000, n = 64, every = 50;
  const auto steps = torch::randn({T, n}, torch::kFloat64) + 0.05;
  const auto walk = steps.cumsum(0);
  Vector model(n), a(n), b(n), target(n);
  Ema ema_a = Ema::power(power_ema_gamma(0.05)), ema_b = Ema::power(power_ema_gamma(0.10));
  Ema ema_target = Ema::power(power_ema_gamma(0.07));
  std::vector<PowerProfile> profiles;
  std::vector<torch::Tensor> snapshots;
  for (int64_t k = 1; k <= T; ++k) {
    model.set(walk[k - 1]);
    ema_a.update(*a.params, *model.params);
    ema_b.update(*b.params, *model.params);
    ema_target.update(*target.params, *model.params);
    if (k % every == 0) {
      profiles.push_back({static_cast<double>(k), ema_a.gamma()});
      snapshots.push_back(a.value().clone());
      profiles.push_back({static_cast<double>(k), ema_b.gamma()});
      snapshots.push_back(b.value().clone());
    }
  }
  const auto fit = posthoc_ema_weights(profiles, {static_cast<double>(T), power_ema_gamma(0.07)});
  auto rebuilt = torch::zeros({n}, torch::kFloat64);
  for (size_t i = 0; i < snapshots.size(); ++i) rebuilt += fit.weights[i] * snapshots[i];
  const double error = (rebuilt - target.value()).norm().item<double>();
  const double nearest =
      std::min((a.value() - target.value()).norm().item<double>(), (b.value() - target.value()).norm().item<double>());
  std::printf("rebuilt σ_rel 0.07: |rebuilt − tracked| %.3g, nearest track %.3g, profile error %.2g\n", error, nearest,
              fit.relative_error);
  EXPECT_LT(fit.relative_error, 1e-3);
  EXPECT_LT(error, 0.1 * nearest);
}

namespace {

TrainConfig snapshot_config(const std::string& dir, int64_t steps) {
  auto c = diffuse::testing::quick_config(dir, steps);
  c.ema_snapshot_every = 3;
  return c;
}

double max_difference(const SafetensorsContent& a, const SafetensorsContent& b) {
  EXPECT_EQ(a.tensors.size(), b.tensors.size());
  double worst = 0.0;
  for (const auto& [name, t] : a.tensors) {
    if (t.is_floating_point()) worst = std::max(worst, (t - b.at(name)).abs().max().item<double>());
  }
  return worst;
}

}  // namespace

TEST(PosthocEma, TrainingWritesSnapshotsThatRebuildTheSampledPowerEma) {
  TempDir dir;
  auto data = load_dataset("mnist", Split::train, DataOptions{0, 40});
  auto config = snapshot_config(dir.str(), 8);
  config.ema_sigma_rel = 0.10;  // the sampled EMA is the σ_rel 0.10 track's twin
  train(config, tiny_info(data), data, torch::kCPU);
  const auto snapshots = list_ema_snapshots(dir.str());
  ASSERT_EQ(snapshots.size(), 6u);  // steps 3, 6 and the last, 8; σ_rel 0.05 and 0.10 each
  // by step, then γ: the last step's σ_rel 0.10 (γ ≈ 6.94), then its 0.05 (γ ≈ 16.97)
  EXPECT_EQ(snapshots[4].profile.t, 8.0);
  EXPECT_EQ(snapshots[5].profile.t, 8.0);
  EXPECT_NEAR(snapshots[4].profile.gamma, power_ema_gamma(0.10), 1e-12);
  EXPECT_NEAR(snapshots[5].profile.gamma, power_ema_gamma(0.05), 1e-12);

  const auto sampled = load_safetensors(dir / "checkpoint.safetensors");
  const auto last = load_safetensors(ema_snapshot_path(dir.str(), 0.10, 8));
  EXPECT_EQ(max_difference(sampled, last), 0.0);  // the same updates of the same weights
  // Keeping snapshots changes nothing of the run itself (its random stream included).
  TempDir plain;
  auto without = config;
  without.out_dir = plain.str();
  without.ema_snapshot_every = 0;
  train(without, tiny_info(data), data, torch::kCPU);
  EXPECT_EQ(max_difference(sampled, load_safetensors(plain / "checkpoint.safetensors")), 0.0);
  EXPECT_FALSE(std::filesystem::exists(plain / "ema_snapshots"));

  // Rebuilding a tracked width at the last step takes that snapshot; at step 6, step 6's.
  for (const auto& [sigma_rel, step] : {std::pair{0.10, 8}, std::pair{0.05, 6}}) {
    const auto rebuilt = posthoc_ema(dir.str(), sigma_rel, step, torch::kCPU);
    EXPECT_EQ(rebuilt.checkpoint.info.step, step);
    EXPECT_LT(rebuilt.fit.relative_error, 1e-10);
    const auto snapshot = load_safetensors(ema_snapshot_path(dir.str(), sigma_rel, step));
    for (const auto& p : rebuilt.checkpoint.model->named_parameters()) {
      EXPECT_TRUE(torch::allclose(p.value(), snapshot.at(p.key()), 1e-5, 1e-6)) << p.key();
    }
  }
  const auto between = posthoc_ema(dir.str(), 0.07, 0, torch::kCPU);
  EXPECT_EQ(between.used.size(), 6u);
  for (const auto& p : between.checkpoint.model->named_parameters()) {
    EXPECT_TRUE(torch::isfinite(p.value()).all().item<bool>()) << p.key();
  }
  EXPECT_NE(error_of([&] { posthoc_ema(dir.str(), 0.07, 2, torch::kCPU); }).find("step 2 or earlier"),
            std::string::npos);

  // A new run into a directory whose ema_snapshots/ holds another's is refused before training.
  std::filesystem::remove(dir / "train_state.safetensors");
  EXPECT_NE(error_of([&] {
              train(snapshot_config(dir.str(), 8), tiny_info(data), data, torch::kCPU);
            }).find("holds another run's EMA snapshots"),
            std::string::npos);
}

TEST(PosthocEma, ResumingKeepsTheSnapshotEmasAsNotStopping) {
  TempDir straight, stopped, without;
  auto data = load_dataset("mnist", Split::train, DataOptions{0, 40});
  train(snapshot_config(straight.str(), 8), tiny_info(data), data, torch::kCPU);
  train(snapshot_config(stopped.str(), 3), tiny_info(data), data, torch::kCPU);
  auto resume = snapshot_config(stopped.str(), 8);
  resume.resume = true;
  train(resume, tiny_info(data), data, torch::kCPU);
  for (const int step : {3, 6, 8}) {
    for (const double sigma_rel : kEmaSnapshotSigmaRels) {
      EXPECT_LE(max_difference(load_safetensors(ema_snapshot_path(straight.str(), sigma_rel, step)),
                               load_safetensors(ema_snapshot_path(stopped.str(), sigma_rel, step))),
                1e-6)
          << sigma_rel << " " << step;
    }
  }
  // Snapshot EMAs cannot start mid-run: a run begun without them refuses to resume with them.
  auto plain = snapshot_config(without.str(), 3);
  plain.ema_snapshot_every = 0;
  train(plain, tiny_info(data), data, torch::kCPU);
  EXPECT_NE(error_of([&] {
              auto late = snapshot_config(without.str(), 8);
              late.resume = true;
              train(late, tiny_info(data), data, torch::kCPU);
            }).find("cannot begin mid-run"),
            std::string::npos);
  auto bad = snapshot_config(without.str(), 8);
  bad.ema_sigma_rel = 0.3;
  EXPECT_NE(error_of([&] { train(bad, tiny_info(data), data, torch::kCPU); }).find("ema_sigma_rel"), std::string::npos);
}
