#include "diffuse/train/power_ema.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace diffuse {

double power_ema_sigma_rel(double gamma) {
  if (!(gamma >= 0.0) || !std::isfinite(gamma)) {
    throw std::invalid_argument("power-function EMA: γ = " + std::to_string(gamma) + " must be a finite number ≥ 0");
  }
  return std::sqrt((gamma + 1.0) / ((gamma + 2.0) * (gamma + 2.0) * (gamma + 3.0)));
}

double power_ema_max_sigma_rel() { return std::sqrt(1.0 / 12.0); }

bool is_power_ema_sigma_rel(double sigma_rel) { return sigma_rel > 0.0 && sigma_rel <= power_ema_max_sigma_rel(); }

double power_ema_gamma(double sigma_rel) {
  if (!is_power_ema_sigma_rel(sigma_rel)) {
    throw std::invalid_argument("power-function EMA: σ_rel = " + std::to_string(sigma_rel) + " must be in (0, " +
                                std::to_string(power_ema_max_sigma_rel()) + "]");
  }
  // σ_rel(γ) falls monotonically on γ ≥ 0 (d log σ²/dγ = −γ/((γ+1)(γ+2)) − 1/(γ+3) < 0), and
  // σ_rel(γ) < 1/(γ + 3), so the root lies in [0, 1/σ_rel]: bisection to float64's resolution.
  double lo = 0.0, hi = 1.0 / sigma_rel;
  for (int i = 0; i < 200 && hi - lo > 1e-15 * hi; ++i) {
    const double mid = 0.5 * (lo + hi);
    (power_ema_sigma_rel(mid) > sigma_rel ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

double power_ema_decay(double gamma, int64_t t) {
  if (t < 1) throw std::invalid_argument("power-function EMA: update " + std::to_string(t) + " (counted from 1)");
  return std::pow(1.0 - 1.0 / static_cast<double>(t), gamma + 1.0);
}

namespace {

void check_profile(const PowerProfile& p, const char* what) {
  if (!(p.t > 0.0) || !std::isfinite(p.t) || !(p.gamma >= 0.0) || !std::isfinite(p.gamma)) {
    throw std::invalid_argument(std::string("post-hoc EMA: ") + what + " (t = " + std::to_string(p.t) +
                                ", γ = " + std::to_string(p.gamma) + ") needs t > 0 and γ ≥ 0");
  }
}

}  // namespace

double power_profile_dot(const PowerProfile& a, const PowerProfile& b) {
  // With m = t_a ≤ t_b: m^(γa+γb+1) / (t_a^(γa+1) t_b^(γb+1)) = (t_a/t_b)^γb / t_b, no large powers.
  const PowerProfile& lo = a.t <= b.t ? a : b;
  const PowerProfile& hi = a.t <= b.t ? b : a;
  const double shape = (a.gamma + 1.0) * (b.gamma + 1.0) / (a.gamma + b.gamma + 1.0);
  return shape * std::pow(lo.t / hi.t, hi.gamma) / hi.t;
}

PosthocEmaWeights posthoc_ema_weights(const std::vector<PowerProfile>& snapshots, const PowerProfile& target) {
  if (snapshots.empty()) throw std::invalid_argument("post-hoc EMA: no snapshots to combine");
  for (const auto& s : snapshots) check_profile(s, "a snapshot's profile");
  check_profile(target, "the target profile");
  const auto n = static_cast<int64_t>(snapshots.size());
  auto A = torch::empty({n, n}, torch::kFloat64);
  auto b = torch::empty({n, 1}, torch::kFloat64);
  auto a_ = A.accessor<double, 2>();
  auto b_ = b.accessor<double, 2>();
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) a_[i][j] = power_profile_dot(snapshots[i], snapshots[j]);
    b_[i][0] = power_profile_dot(snapshots[i], target);
  }
  // gelsd: the SVD-based solver, whose answer for a singular A (two snapshots of one profile) is
  // the minimum-norm x.
  const auto x = std::get<0>(torch::linalg_lstsq(A, b, c10::nullopt, "gelsd"));
  PosthocEmaWeights out;
  out.weights.assign(x.data_ptr<double>(), x.data_ptr<double>() + n);
  // ‖p_target − Σ x_i p_i‖² = ⟨p_target, p_target⟩ − 2 xᵀb + xᵀ A x
  const double target_norm2 = power_profile_dot(target, target);
  const double error2 = target_norm2 - 2.0 * (x * b).sum().item<double>() + x.t().mm(A).mm(x).item<double>();
  out.relative_error = std::max(0.0, error2) / target_norm2;
  return out;
}

}  // namespace diffuse
