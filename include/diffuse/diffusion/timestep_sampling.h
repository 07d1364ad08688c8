// How training draws its timesteps t ∈ {0, …, T−1}.
//   uniform:        t ~ U{0, …, T−1}  (Ho et al. 2020)
//   log-snr-normal: λ ~ N(μ, s²) and t the step whose log-SNR λ_t = log(ᾱ_t / (1 − ᾱ_t)) is nearest to λ:
//     P(t = k) = Φ((m_{k−1} − μ)/s) − Φ((m_k − μ)/s),  m_k = (λ_k + λ_{k+1})/2,  m_{−1} = +∞,  m_{T−1} = −∞
//   The draws gather where λ_t is near μ, whatever the β schedule: Karras et al. 2022's
//   ln σ ~ N(−1.2, 1.2²) is λ ~ N(2.4, 2.4²) (λ = −2 ln σ); Esser et al. 2024's logit-normal t of
//   rectified flow is λ ~ N(0, 2²). Drawing t otherwise than uniformly reweights the loss across t by
//   T · P(t = k): another objective, not only another estimate of the same one.
// stratified (either law): the batch's B timesteps are the law's inverse CDF F⁻¹ at (u + i)/B,
//   i = 0..B−1, u ~ U[0, 1), in random order (the low-discrepancy sampler of Kingma et al. 2021,
//   appendix I.2): each t alone still has the law P(t = k), so the loss's expectation is unchanged,
//   while one batch covers the law evenly and its mean loss varies less from batch to batch.
#pragma once

#include <torch/torch.h>

#include <string>

#include "diffuse/schedule/noise_schedule.h"

namespace diffuse {

enum class TimestepSamplingKind { uniform, log_snr_normal };
std::string to_string(TimestepSamplingKind kind);
TimestepSamplingKind timestep_sampling_from_string(const std::string& name);  // "uniform" | "log-snr-normal"

struct TimestepSampling {
  TimestepSamplingKind kind = TimestepSamplingKind::uniform;
  double log_snr_mean = 0.0;  // μ
  double log_snr_std = 2.0;   // s > 0
  // Draw t by importance of the loss on top of this law, each image's loss weighted back to it
  // (diffusion/loss_aware_timesteps.h): the same objective, estimated with less variance.
  bool loss_aware = false;
  // One batch's t spread over the law by stratified draws (above), instead of independent ones.
  bool stratified = false;
};

// Throws std::invalid_argument naming the field where μ is not finite or s is not in (0, 100].
void check_timestep_sampling(const TimestepSampling& sampling);

// P(t = k) for k = 0..T−1, float64 [T] (sums to 1): what sample_timesteps draws from.
torch::Tensor timestep_probabilities(const TimestepSampling& sampling, const NoiseSchedule& schedule);

// `batch` timesteps [batch] (int64, on the CPU) from P(t = k) = p[k] (p [T] float64, non-negative,
// summing to 1), stratified: F⁻¹((u + i)/batch) with F(k) = Σ_{j≤k} p[j], in random order.
torch::Tensor stratified_timesteps(const torch::Tensor& p, int64_t batch,
                                   const c10::optional<torch::Generator>& gen = c10::nullopt);

// A batch of timesteps [batch] (int64, on the CPU) drawn as above.
torch::Tensor sample_timesteps(const TimestepSampling& sampling, const NoiseSchedule& schedule, int64_t batch,
                               const c10::optional<torch::Generator>& gen = c10::nullopt);

}  // namespace diffuse
