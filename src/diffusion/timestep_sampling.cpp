#include "diffuse/diffusion/timestep_sampling.h"

#include <cmath>
#include <stdexcept>

namespace diffuse {

std::string to_string(TimestepSamplingKind kind) {
  return kind == TimestepSamplingKind::uniform ? "uniform" : "log-snr-normal";
}

TimestepSamplingKind timestep_sampling_from_string(const std::string& name) {
  if (name == "uniform") return TimestepSamplingKind::uniform;
  if (name == "log-snr-normal") return TimestepSamplingKind::log_snr_normal;
  throw std::invalid_argument("unknown timestep sampling '" + name + "' (known: uniform, log-snr-normal)");
}

void check_timestep_sampling(const TimestepSampling& sampling) {
  if (!std::isfinite(sampling.log_snr_mean)) {
    throw std::invalid_argument("timestep sampling: the log-SNR mean must be finite");
  }
  if (!(sampling.log_snr_std > 0 && sampling.log_snr_std <= 100)) {
    throw std::invalid_argument("timestep sampling: the log-SNR standard deviation must be in (0, 100]");
  }
}

namespace {

// m_k = (λ_k + λ_{k+1})/2 for k = 0..T−2: the boundaries between the steps' log-SNRs (λ_t falls with t)
std::vector<double> log_snr_midpoints(const NoiseSchedule& schedule) {
  std::vector<double> mid;
  for (size_t k = 0; k + 1 < schedule.snr.size(); ++k) {
    mid.push_back(0.5 * (std::log(schedule.snr[k]) + std::log(schedule.snr[k + 1])));
  }
  return mid;
}

double standard_normal_cdf(double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); }

}  // namespace

torch::Tensor timestep_probabilities(const TimestepSampling& sampling, const NoiseSchedule& schedule) {
  check_timestep_sampling(sampling);
  const int64_t T = schedule.timesteps();
  if (sampling.kind == TimestepSamplingKind::uniform) return torch::full({T}, 1.0 / T, torch::kFloat64);
  const auto mid = log_snr_midpoints(schedule);
  auto p = torch::empty({T}, torch::kFloat64);
  auto* out = p.data_ptr<double>();
  // P(λ > m_k) = 1 − Φ((m_k − μ)/s); P(t = k) = P(λ > m_k) − P(λ > m_{k−1})
  auto above = [&](int64_t k) {
    if (k < 0) return 0.0;
    if (k >= T - 1) return 1.0;
    return 1.0 - standard_normal_cdf((mid[k] - sampling.log_snr_mean) / sampling.log_snr_std);
  };
  for (int64_t k = 0; k < T; ++k) out[k] = above(k) - above(k - 1);
  return p;
}

torch::Tensor stratified_timesteps(const torch::Tensor& p, int64_t batch, const c10::optional<torch::Generator>& gen) {
  // u_i = (u + i)/B, one u for the batch; t_i = F⁻¹(u_i) = #{k : F(k) ≤ u_i}, the first k with F(k) > u_i
  const auto u = (torch::rand({1}, gen, torch::kFloat64) + torch::arange(batch, torch::kFloat64)) / double(batch);
  const auto cdf = p.to(torch::kFloat64).cumsum(0);
  // F(T−1) may round below u_i: then the last step of non-zero probability, not T
  const int64_t last = torch::nonzero(p > 0).max().item<int64_t>();
  const auto t = torch::searchsorted(cdf, u, /*out_int32=*/false, /*right=*/true).clamp_max(last);
  return t.index_select(0, torch::randperm(batch, gen, torch::kLong));
}

torch::Tensor sample_timesteps(const TimestepSampling& sampling, const NoiseSchedule& schedule, int64_t batch,
                               const c10::optional<torch::Generator>& gen) {
  check_timestep_sampling(sampling);
  if (sampling.stratified) return stratified_timesteps(timestep_probabilities(sampling, schedule), batch, gen);
  const int64_t T = schedule.timesteps();
  if (sampling.kind == TimestepSamplingKind::uniform) {
    return torch::randint(0, T, {batch}, gen, torch::dtype(torch::kLong));
  }
  // λ ~ N(μ, s²); t = #{k : m_k > λ}, the index of the step nearest in log-SNR
  const auto lambda = torch::randn({batch}, gen, torch::kFloat64) * sampling.log_snr_std + sampling.log_snr_mean;
  const auto mid = log_snr_midpoints(schedule);
  const auto descending = torch::tensor(mid, torch::kFloat64).neg();  // −m_k rises with k
  return torch::searchsorted(descending, lambda.neg(), /*out_int32=*/false, /*right=*/false);
}

}  // namespace diffuse
