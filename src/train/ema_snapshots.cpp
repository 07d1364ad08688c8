#include "diffuse/train/ema_snapshots.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <stdexcept>

#include "diffuse/io/safetensors.h"

namespace diffuse {

namespace fs = std::filesystem;

std::string ema_snapshot_dir(const std::string& run_dir) { return run_dir + "/ema_snapshots"; }

std::string ema_snapshot_path(const std::string& run_dir, double sigma_rel, int64_t step) {
  char name[96];
  std::snprintf(name, sizeof name, "/sigma_rel_%.3f_step_%07lld.safetensors", sigma_rel, static_cast<long long>(step));
  return ema_snapshot_dir(run_dir) + name;
}

void save_ema_snapshot(const std::string& run_dir, const UNet& ema_model, const CheckpointInfo& info, double gamma) {
  const double sigma_rel = power_ema_sigma_rel(gamma);
  fs::create_directories(ema_snapshot_dir(run_dir));
  auto metadata = checkpoint_metadata(info);
  char text[64];
  std::snprintf(text, sizeof text, "%.17g", gamma);
  metadata["ema_gamma"] = text;
  std::snprintf(text, sizeof text, "%.17g", sigma_rel);
  metadata["ema_sigma_rel"] = text;
  save_safetensors(ema_snapshot_path(run_dir, sigma_rel, info.step), named_state(*ema_model), metadata);
}

namespace {

double metadata_gamma(const std::map<std::string, std::string>& metadata, const std::string& source) {
  const auto it = metadata.find("ema_gamma");
  if (it == metadata.end())
    throw std::runtime_error("'" + source + "': no \"ema_gamma\" in its metadata (not an EMA snapshot)");
  size_t used = 0;
  double gamma = NAN;
  try {
    gamma = std::stod(it->second, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != it->second.size() || !std::isfinite(gamma) || gamma < 0.0) {
    throw std::runtime_error("'" + source + "': \"ema_gamma\" = \"" + it->second + "\" is not a finite number ≥ 0");
  }
  return gamma;
}

}  // namespace

std::vector<EmaSnapshot> list_ema_snapshots(const std::string& run_dir) {
  const auto dir = ema_snapshot_dir(run_dir);
  std::error_code error;
  if (!fs::is_directory(dir, error)) {
    throw std::runtime_error("no '" + dir + "': train with --ema-snapshot-every N to keep EMA snapshots");
  }
  std::vector<EmaSnapshot> out;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (!entry.is_regular_file() || entry.path().extension() != ".safetensors") continue;
    const auto path = entry.path().string();
    const auto metadata = load_safetensors_metadata(path);
    const int64_t step = metadata_count(metadata, "step", path);
    if (step < 1) throw std::runtime_error("'" + path + "': an EMA snapshot of step 0");
    out.push_back({path, PowerProfile{static_cast<double>(step), metadata_gamma(metadata, path)}});
  }
  if (out.empty()) throw std::runtime_error("no EMA snapshots in '" + dir + "'");
  std::sort(out.begin(), out.end(), [](const EmaSnapshot& a, const EmaSnapshot& b) {
    return a.profile.t != b.profile.t ? a.profile.t < b.profile.t : a.profile.gamma < b.profile.gamma;
  });
  return out;
}

PosthocEma posthoc_ema(const std::string& run_dir, double sigma_rel, int64_t step, torch::Device device) {
  const double gamma = power_ema_gamma(sigma_rel);
  PosthocEma out;
  for (auto& s : list_ema_snapshots(run_dir)) {
    if (step <= 0 || s.profile.t <= static_cast<double>(step)) out.used.push_back(std::move(s));
  }
  if (out.used.empty()) {
    throw std::runtime_error("no EMA snapshot in '" + ema_snapshot_dir(run_dir) + "' is of step " +
                             std::to_string(step) + " or earlier");
  }
  const double t = step > 0 ? static_cast<double>(step) : out.used.back().profile.t;
  std::vector<PowerProfile> profiles;
  for (const auto& s : out.used) profiles.push_back(s.profile);
  out.fit = posthoc_ema_weights(profiles, PowerProfile{t, gamma});

  // θ = Σ x_i θ̂_i over the parameters, in float64; buffers (no weights of training) from the last.
  // The last snapshot, read once: the network, its buffers and its term of the sum.
  const auto last = load_safetensors(out.used.back().path);
  out.checkpoint = checkpoint_from_safetensors(last, out.used.back().path);
  const std::string& model_json = last.metadata.at("model");
  std::map<std::string, torch::Tensor> sums;
  for (const auto& p : out.checkpoint.model->named_parameters()) {
    sums[p.key()] = torch::zeros(p.value().sizes(), torch::kFloat64);
  }
  for (size_t i = 0; i < out.used.size(); ++i) {
    const bool is_last = i + 1 == out.used.size();
    const SafetensorsContent earlier = is_last ? SafetensorsContent{} : load_safetensors(out.used[i].path);
    const SafetensorsContent& content = is_last ? last : earlier;
    if (content.metadata.count("model") == 0 || content.metadata.at("model") != model_json) {
      throw std::runtime_error("'" + out.used[i].path + "' is a snapshot of another network than '" +
                               out.used.back().path + "'");
    }
    for (auto& [name, sum] : sums) {
      const auto& tensor = content.at(name);
      if (tensor.sizes() != sum.sizes()) {
        throw std::runtime_error("'" + out.used[i].path + "': tensor '" + name + "' has another shape than in '" +
                                 out.used.back().path + "'");
      }
      check_tensor_values(tensor, name, out.used[i].path);
      sum.add_(tensor.to(torch::kFloat64), out.fit.weights[i]);
    }
  }
  {
    torch::NoGradGuard no_grad;
    for (auto& p : out.checkpoint.model->named_parameters()) p.value().copy_(sums.at(p.key()));
  }
  out.checkpoint.info.step = static_cast<int64_t>(t);
  out.checkpoint.model->to(device);
  return out;
}

}  // namespace diffuse
