// Importance sampling of t by the loss (Nichol & Dhariwal 2021, §3.3), on top of a base law q of t
// (uniform, or log-SNR-normal: diffusion/timestep_sampling.h).
//   The objective L = E_{t~q}[ℓ_t] is estimated from t ~ p with each image's loss weighted by q_t / p_t:
//   E_{t~p}[(q_t / p_t) ℓ_t] = Σ_t q_t ℓ_t = L for any p > 0 where q > 0, so the objective is q's and only
//   the estimate's variance changes; it is least for p_t ∝ q_t √E[ℓ_t²].
//   t is grouped into B bins of equal q-mass, b(t) = min(B − 1, ⌊B (Q_{t−1} + q_t / 2)⌋) with Q the cumulative of q;
//   r_b = √(mean of the last H squared losses drawn in bin b), and
//     p_t = (1 − u) q_t r_{b(t)} / Σ_k q_k r_{b(k)} + u q_t,
//   where the share u of q keeps every weight q_t / p_t ≤ 1/u. Until every bin holds H losses, p = q (weights 1).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

namespace diffuse {

class LossAwareTimesteps {
 public:
  static constexpr int64_t kBins = 20, kHistory = 32;  // B and H
  static constexpr double kMix = 0.1;                   // u

  // base: q [T] float64, non-negative, summing to 1 (timestep_probabilities); stratified: a batch's t
  // drawn from p by stratified_timesteps (timestep_sampling.h) instead of independently.
  explicit LossAwareTimesteps(const torch::Tensor& base, int64_t bins = kBins, int64_t history = kHistory,
                              double mix = kMix, bool stratified = false);

  struct Draw {
    torch::Tensor t;        // [batch] int64
    torch::Tensor weights;  // [batch] float32: q_t / p_t
  };
  Draw sample(int64_t batch, const c10::optional<torch::Generator>& gen = c10::nullopt) const;

  // The per-image losses ℓ [batch] of the timesteps t [batch] (any device); non-finite ones are left out.
  void record(const torch::Tensor& t, const torch::Tensor& losses);

  torch::Tensor probabilities() const;  // p [T] float64
  bool warm() const;                    // every bin holds `history` losses
  int64_t bin_of(int64_t t) const { return bin_of_[static_cast<size_t>(t)]; }
  int64_t bins() const { return bins_; }

  // For resuming a run: [B, H + 1] float64, each bin's last H squared losses and then how many it has seen.
  torch::Tensor state() const;
  // Throws std::runtime_error naming `source` where the state is not of this sampler's shape or not valid.
  void load_state(const torch::Tensor& state, const std::string& source);

 private:
  std::vector<double> root_mean_squares() const;  // r_b

  torch::Tensor base_;           // q
  std::vector<int64_t> bin_of_;  // b(t)
  int64_t bins_, history_;
  double mix_;
  bool stratified_;
  std::vector<double> squares_;  // [B × H] ring buffers of ℓ²
  std::vector<int64_t> seen_;    // [B]
};

}  // namespace diffuse
