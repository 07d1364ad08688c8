#include "diffuse/checkpoint/checkpoint.h"

#include <filesystem>
#include <stdexcept>

#include "diffuse/checkpoint/diffusers.h"
#include "diffuse/io/json_value.h"

namespace diffuse {

namespace {
constexpr const char* kFormat = "diffuse-checkpoint-1";
}

nlohmann::json to_json(const ScheduleConfig& c) {
  nlohmann::json j = {
      {"kind", to_string(c.kind)}, {"timesteps", c.timesteps}, {"beta_start", c.beta_start}, {"beta_end", c.beta_end}};
  if (c.kind == BetaSchedule::trained) j["betas"] = c.trained_betas;
  return j;
}

ScheduleConfig schedule_config_from_json(const nlohmann::json& j) {
  ScheduleConfig c;
  const std::string what = "schedule";
  c.kind = beta_schedule_from_string(json_field<std::string>(j, "kind", what));
  c.timesteps = json_field<int64_t>(j, "timesteps", what);
  // bounded before any table of T entries is allocated
  if (c.timesteps < 1 || c.timesteps > kMaxTimesteps) {
    throw std::invalid_argument("schedule.timesteps = " + std::to_string(c.timesteps) + ": must be in [1, " +
                                std::to_string(kMaxTimesteps) + "]");
  }
  c.beta_start = json_field<double>(j, "beta_start", what);
  c.beta_end = json_field<double>(j, "beta_end", what);
  if (c.kind == BetaSchedule::trained) c.trained_betas = json_field<std::vector<double>>(j, "betas", what);
  make_betas(c);  // every β in (0, 1), T of them
  return c;
}

nlohmann::json to_json(const SamplingDefaults& d) {
  return {{"spacing", to_string(d.spacing)},
          {"clip_x0", d.clip_x0},
          {"clipped_eps", d.clipped_eps == ClippedEps::recompute ? "recompute" : "keep"},
          {"ddpm_variance", d.ddpm_large_variance ? "beta" : "posterior"}};
}

SamplingDefaults sampling_defaults_from_json(const nlohmann::json& j) {
  SamplingDefaults d;
  const std::string what = "sampling";
  d.spacing = timestep_spacing_from_string(json_field<std::string>(j, "spacing", what));
  d.clip_x0 = json_field<bool>(j, "clip_x0", what);
  const auto clipped_eps = json_field<std::string>(j, "clipped_eps", what);
  if (clipped_eps != "recompute" && clipped_eps != "keep") {
    throw std::invalid_argument("sampling.clipped_eps '" + clipped_eps + "' (expected recompute or keep)");
  }
  d.clipped_eps = clipped_eps == "keep" ? ClippedEps::keep : ClippedEps::recompute;
  const auto variance = json_field<std::string>(j, "ddpm_variance", what);
  if (variance != "beta" && variance != "posterior") {
    throw std::invalid_argument("sampling.ddpm_variance '" + variance + "' (expected posterior or beta)");
  }
  d.ddpm_large_variance = variance == "beta";
  return d;
}

void check_tokenizer_fits(const CheckpointInfo& info) {
  const auto& m = info.model;
  if (m.text_conditional() != info.tokenizer.has_value()) {
    throw std::runtime_error(m.text_conditional() ? "a text-conditional model needs its tokenizer, and there is none"
                                                  : "a tokenizer for a model that takes no text");
  }
  if (info.tokenizer &&
      (info.tokenizer->vocab_size() != m.text_vocab_size || info.tokenizer->max_tokens() != m.text_max_tokens)) {
    throw std::runtime_error("the tokenizer has " + std::to_string(info.tokenizer->vocab_size()) + " ids and rows of " +
                             std::to_string(info.tokenizer->max_tokens()) + ", the model's encoder " +
                             std::to_string(m.text_vocab_size) + " and " + std::to_string(m.text_max_tokens));
  }
}

void check_image_condition_fits(const CheckpointInfo& info) {
  if (!info.image_condition) return;
  check_image_condition(*info.image_condition, info.model.image_size);
  const int64_t channels = condition_channels(*info.image_condition, info.model.in_channels);
  if (info.model.extra_in_channels != channels) {
    throw std::runtime_error("the " + to_string(info.image_condition->kind) + " condition has " +
                             std::to_string(channels) + " channels, the model takes " +
                             std::to_string(info.model.extra_in_channels));
  }
}

nlohmann::json to_json(const ImageCondition& condition) {
  nlohmann::json j = {{"kind", to_string(condition.kind)}};
  if (condition.kind == ImageConditionKind::super_resolution) j["factor"] = condition.factor;
  return j;
}

ImageCondition image_condition_from_json(const nlohmann::json& j) {
  ImageCondition c;
  c.kind = image_condition_kind_from_string(json_field<std::string>(j, "kind", "image_condition"));
  if (c.kind == ImageConditionKind::super_resolution) c.factor = json_field<int64_t>(j, "factor", "image_condition");
  return c;
}

std::map<std::string, std::string> checkpoint_metadata(const CheckpointInfo& info) {
  nlohmann::json data = {{"name", info.data.name},
                         {"channels", info.data.channels},
                         {"image_size", info.data.image_size},
                         {"num_classes", info.data.num_classes}};
  std::map<std::string, std::string> metadata{{"format", kFormat},
                                              {"model", to_json(info.model).dump()},
                                              {"schedule", to_json(info.schedule).dump()},
                                              {"objective", to_string(info.objective)},
                                              {"data", data.dump()},
                                              {"step", std::to_string(info.step)},
                                              {"sampling", to_json(info.sampling).dump()}};
  if (info.tokenizer) metadata["tokenizer"] = info.tokenizer->to_json().dump();
  if (info.image_condition) metadata["image_condition"] = to_json(*info.image_condition).dump();
  return metadata;
}

CheckpointInfo checkpoint_info_from_metadata(const std::map<std::string, std::string>& md, const std::string& source) {
  auto field = [&](const std::string& key) -> const std::string& {
    auto it = md.find(key);
    if (it == md.end()) {
      throw std::runtime_error("checkpoint '" + source + "': metadata has no '" + key +
                               "' (not a diffuse checkpoint?)");
    }
    return it->second;
  };
  if (field("format") != kFormat) {
    throw std::runtime_error("checkpoint '" + source + "': format '" + field("format") + "', expected '" + kFormat + "'");
  }
  CheckpointInfo info;
  try {
    info.model = unet_config_from_json(nlohmann::json::parse(field("model")));
    info.schedule = schedule_config_from_json(nlohmann::json::parse(field("schedule")));
    info.objective = objective_from_string(field("objective"));
    const auto data = nlohmann::json::parse(field("data"));
    info.data.name = json_field<std::string>(data, "name", "data");
    info.data.channels = json_field<int64_t>(data, "channels", "data");
    info.data.image_size = json_field<int64_t>(data, "image_size", "data");
    info.data.num_classes = json_field<int64_t>(data, "num_classes", "data");
    info.step = metadata_count(md, "step", source);
    if (md.count("sampling")) info.sampling = sampling_defaults_from_json(nlohmann::json::parse(md.at("sampling")));
    if (md.count("tokenizer")) info.tokenizer = Tokenizer::from_json(nlohmann::json::parse(md.at("tokenizer")));
    check_tokenizer_fits(info);
    if (md.count("image_condition"))
      info.image_condition = image_condition_from_json(nlohmann::json::parse(md.at("image_condition")));
    check_image_condition_fits(info);
  } catch (const std::exception& e) {
    throw std::runtime_error("checkpoint '" + source + "': bad metadata: " + e.what());
  }
  return info;
}

std::vector<std::pair<std::string, torch::Tensor>> named_state(const torch::nn::Module& module) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& p : module.named_parameters()) out.emplace_back(p.key(), p.value());
  for (const auto& b : module.named_buffers()) out.emplace_back(b.key(), b.value());
  return out;
}

int64_t metadata_count(const std::map<std::string, std::string>& metadata, const std::string& key,
                       const std::string& source) {
  const auto it = metadata.find(key);
  if (it == metadata.end()) throw std::runtime_error("'" + source + "': metadata has no '" + key + "'");
  const std::string& text = it->second;
  const bool digits = !text.empty() && text.size() <= 18 && text.find_first_not_of("0123456789") == std::string::npos;
  if (!digits) {
    throw std::runtime_error("'" + source + "': metadata '" + key + "' = '" + text + "' is not a whole number >= 0");
  }
  return std::stoll(text);
}

void check_tensor_values(const torch::Tensor& t, const std::string& name, const std::string& source) {
  if (t.is_floating_point() && !torch::isfinite(t).all().item<bool>()) {
    throw std::runtime_error("'" + source + "': tensor '" + name + "' holds NaN or Inf");
  }
}

void load_named_state(torch::nn::Module& module, const SafetensorsContent& content, const std::string& prefix) {
  torch::NoGradGuard no_grad;
  auto copy_into = [&](const std::string& name, torch::Tensor& dst) {
    const auto& src = content.at(prefix + name);
    if (src.sizes() != dst.sizes()) {
      std::ostringstream msg;
      msg << "'" << content.source << "': tensor '" << prefix + name << "' has shape " << src.sizes()
          << " but the model expects " << dst.sizes();
      throw std::runtime_error(msg.str());
    }
    if (dst.is_floating_point() && !src.is_floating_point()) {
      throw std::runtime_error("'" + content.source + "': tensor '" + prefix + name + "' is " +
                               c10::toString(src.scalar_type()) + ", not floating-point as the weights are");
    }
    check_tensor_values(src, prefix + name, content.source);
    dst.copy_(src);
  };
  for (auto& p : module.named_parameters()) copy_into(p.key(), p.value());
  for (auto& b : module.named_buffers()) copy_into(b.key(), b.value());
}

void save_checkpoint(const std::string& path, const UNet& model, const CheckpointInfo& info) {
  save_safetensors(path, named_state(*model), checkpoint_metadata(info));
}

LoadedCheckpoint load_checkpoint(const std::string& path, torch::Device device) {
  if (!std::filesystem::exists(path)) throw std::runtime_error("checkpoint '" + path + "' does not exist");
  if (std::filesystem::is_directory(path)) return load_diffusers(path, device);
  auto out = checkpoint_from_safetensors(load_safetensors(path), path);
  out.model->to(device);
  return out;
}

LoadedCheckpoint checkpoint_from_safetensors(const SafetensorsContent& content, const std::string& path) {
  LoadedCheckpoint out;
  out.info = checkpoint_info_from_metadata(content.metadata, path);
  out.model = UNet(out.info.model);
  load_named_state(*out.model, content);
  out.model->eval();
  return out;
}

}  // namespace diffuse
