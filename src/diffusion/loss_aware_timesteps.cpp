#include "diffuse/diffusion/loss_aware_timesteps.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "diffuse/diffusion/timestep_sampling.h"

namespace diffuse {

LossAwareTimesteps::LossAwareTimesteps(const torch::Tensor& base, int64_t bins, int64_t history, double mix,
                                       bool stratified)
    : base_(base.to(torch::kFloat64).contiguous().clone()),
      bins_(bins),
      history_(history),
      mix_(mix),
      stratified_(stratified) {
  if (base_.dim() != 1 || base_.numel() < 1) throw std::invalid_argument("loss-aware timesteps: q must be [T]");
  if (bins < 1 || history < 1) throw std::invalid_argument("loss-aware timesteps: bins and history must be >= 1");
  if (!(mix > 0.0 && mix <= 1.0)) throw std::invalid_argument("loss-aware timesteps: the share of q must be in (0, 1]");
  const auto* q = base_.data_ptr<double>();
  const int64_t T = base_.numel();
  double total = 0.0;
  for (int64_t t = 0; t < T; ++t) {
    if (!(q[t] >= 0.0) || !std::isfinite(q[t])) throw std::invalid_argument("loss-aware timesteps: q must be >= 0");
    total += q[t];
  }
  if (std::abs(total - 1.0) > 1e-6) throw std::invalid_argument("loss-aware timesteps: q must sum to 1");
  // b(t) = min(B − 1, ⌊B (Q_{t−1} + q_t / 2)⌋): the bin of t's middle of mass
  bin_of_.resize(static_cast<size_t>(T));
  double below = 0.0;  // Q_{t−1}
  for (int64_t t = 0; t < T; ++t) {
    bin_of_[static_cast<size_t>(t)] = std::min(bins - 1, static_cast<int64_t>(bins * (below + 0.5 * q[t])));
    below += q[t];
  }
  squares_.assign(static_cast<size_t>(bins * history), 0.0);
  seen_.assign(static_cast<size_t>(bins), 0);
}

bool LossAwareTimesteps::warm() const {
  std::vector<bool> used(static_cast<size_t>(bins_), false);
  for (int64_t b : bin_of_) used[static_cast<size_t>(b)] = true;
  for (int64_t b = 0; b < bins_; ++b) {
    if (used[static_cast<size_t>(b)] && seen_[static_cast<size_t>(b)] < history_) return false;
  }
  return true;
}

std::vector<double> LossAwareTimesteps::root_mean_squares() const {
  std::vector<double> r(static_cast<size_t>(bins_), 0.0);
  for (int64_t b = 0; b < bins_; ++b) {
    const int64_t n = std::min(seen_[static_cast<size_t>(b)], history_);
    double sum = 0.0;
    for (int64_t k = 0; k < n; ++k) sum += squares_[static_cast<size_t>(b * history_ + k)];
    r[static_cast<size_t>(b)] = n > 0 ? std::sqrt(sum / static_cast<double>(n)) : 0.0;
  }
  return r;
}

torch::Tensor LossAwareTimesteps::probabilities() const {
  if (!warm()) return base_.clone();
  const auto r = root_mean_squares();
  const auto* q = base_.data_ptr<double>();
  const int64_t T = base_.numel();
  double z = 0.0;  // Σ_k q_k r_{b(k)}
  for (int64_t t = 0; t < T; ++t) z += q[t] * r[static_cast<size_t>(bin_of_[static_cast<size_t>(t)])];
  if (!(z > 0.0) || !std::isfinite(z)) return base_.clone();  // every loss 0 (or overflowed): nothing to prefer
  auto p = torch::empty({T}, torch::kFloat64);
  auto* out = p.data_ptr<double>();
  // p_t = (1 − u) q_t r_{b(t)} / z + u q_t
  for (int64_t t = 0; t < T; ++t) {
    out[t] = (1.0 - mix_) * q[t] * r[static_cast<size_t>(bin_of_[static_cast<size_t>(t)])] / z + mix_ * q[t];
  }
  return p;
}

LossAwareTimesteps::Draw LossAwareTimesteps::sample(int64_t batch, const c10::optional<torch::Generator>& gen) const {
  const auto p = probabilities();
  auto t = stratified_ ? stratified_timesteps(p, batch, gen) : torch::multinomial(p, batch, /*replacement=*/true, gen);
  auto weights = (base_.index_select(0, t) / p.index_select(0, t)).to(torch::kFloat32);  // q_t / p_t
  return {t, weights};
}

void LossAwareTimesteps::record(const torch::Tensor& t, const torch::Tensor& losses) {
  const auto steps = t.to(torch::kCPU, torch::kLong).contiguous();
  const auto values = losses.detach().to(torch::kCPU, torch::kFloat64).contiguous();
  if (steps.numel() != values.numel()) throw std::invalid_argument("loss-aware timesteps: one loss per timestep");
  const auto* ts = steps.data_ptr<int64_t>();
  const auto* ls = values.data_ptr<double>();
  for (int64_t i = 0; i < steps.numel(); ++i) {
    if (ts[i] < 0 || ts[i] >= base_.numel()) throw std::out_of_range("loss-aware timesteps: t outside [0, T)");
    if (!std::isfinite(ls[i])) continue;
    const int64_t b = bin_of_[static_cast<size_t>(ts[i])];
    auto& n = seen_[static_cast<size_t>(b)];
    squares_[static_cast<size_t>(b * history_ + n % history_)] = ls[i] * ls[i];
    ++n;
  }
}

torch::Tensor LossAwareTimesteps::state() const {
  auto s = torch::empty({bins_, history_ + 1}, torch::kFloat64);
  auto a = s.accessor<double, 2>();
  for (int64_t b = 0; b < bins_; ++b) {
    for (int64_t k = 0; k < history_; ++k) a[b][k] = squares_[static_cast<size_t>(b * history_ + k)];
    a[b][history_] = static_cast<double>(seen_[static_cast<size_t>(b)]);
  }
  return s;
}

void LossAwareTimesteps::load_state(const torch::Tensor& state, const std::string& source) {
  if (state.dim() != 2 || state.size(0) != bins_ || state.size(1) != history_ + 1 || !state.is_floating_point()) {
    throw std::runtime_error("'" + source + "': the loss-aware timesteps' state is not [" + std::to_string(bins_) +
                             ", " + std::to_string(history_ + 1) + "] floats");
  }
  const auto s = state.to(torch::kFloat64).contiguous();
  auto a = s.accessor<double, 2>();
  for (int64_t b = 0; b < bins_; ++b) {
    const double n = a[b][history_];
    if (!(n >= 0.0 && n <= 9.0e15 && n == std::floor(n))) {
      throw std::runtime_error("'" + source +
                               "': a bin of the loss-aware timesteps' state has a count that is not a "
                               "whole number >= 0");
    }
    for (int64_t k = 0; k < history_; ++k) {
      if (!(a[b][k] >= 0.0) || !std::isfinite(a[b][k])) {
        throw std::runtime_error("'" + source +
                                 "': the loss-aware timesteps' state holds a squared loss that is "
                                 "negative, NaN or infinite");
      }
    }
  }
  for (int64_t b = 0; b < bins_; ++b) {
    for (int64_t k = 0; k < history_; ++k) squares_[static_cast<size_t>(b * history_ + k)] = a[b][k];
    seen_[static_cast<size_t>(b)] = static_cast<int64_t>(a[b][history_]);
  }
}

}  // namespace diffuse
