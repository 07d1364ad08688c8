// diffusers' tensor names and folders: the U-Net's modules under UNet2DModel's names, read and written.
#include "diffuse/checkpoint/diffusers.h"

#include <filesystem>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>

#include "diffuse/io/atomic_file.h"

namespace diffuse {

namespace fs = std::filesystem;

namespace {

enum class BlockKind { plain, residual, attention };

// Our module path (the part before the first '.') → diffusers' path and what kind of block it is.
std::pair<std::string, BlockKind> diffusers_module(const std::string& module, int64_t levels) {
  static const std::regex block(R"((down|up)_(\d+)_(\d+)_(res|attn))");
  static const std::regex resample(R"((down|up)_(\d+)_(downsample|upsample))");
  static const std::map<std::string, std::pair<std::string, BlockKind>> fixed = {
      {"time_fc1", {"time_embedding.linear_1", BlockKind::plain}},
      {"time_fc2", {"time_embedding.linear_2", BlockKind::plain}},
      {"label_embedding", {"class_embedding", BlockKind::plain}},
      {"conv_in", {"conv_in", BlockKind::plain}},
      {"norm_out", {"conv_norm_out", BlockKind::plain}},
      {"conv_out", {"conv_out", BlockKind::plain}},
      {"mid_res1", {"mid_block.resnets.0", BlockKind::residual}},
      {"mid_attn", {"mid_block.attentions.0", BlockKind::attention}},
      {"mid_res2", {"mid_block.resnets.1", BlockKind::residual}}};
  if (auto it = fixed.find(module); it != fixed.end()) return it->second;
  // diffusers counts up blocks from the bottom: our level L is its up block levels − 1 − L
  auto block_path = [&](const std::string& direction, int64_t level) {
    return direction == "down" ? "down_blocks." + std::to_string(level)
                               : "up_blocks." + std::to_string(levels - 1 - level);
  };
  std::smatch m;
  if (std::regex_match(module, m, block)) {
    const bool attention = m[4] == "attn";
    return {block_path(m[1], std::stoll(m[2])) + (attention ? ".attentions." : ".resnets.") + m[3].str(),
            attention ? BlockKind::attention : BlockKind::residual};
  }
  if (std::regex_match(module, m, resample)) {
    return {block_path(m[1], std::stoll(m[2])) + (m[1] == "down" ? ".downsamplers.0" : ".upsamplers.0"),
            BlockKind::plain};
  }
  throw std::logic_error("diffusers: no name for module '" + module + "'");
}

// Attention's 1×1 convolutions are linear layers in diffusers: [C_out, C_in, 1, 1] ↔ [C_out, C_in].
// (Attention modules are "mid_attn" and "<down|up>_L_B_attn"; their only 4-D tensors are those weights.)
bool is_attention_conv_weight(const std::string& name, const torch::Tensor& t) {
  const std::string module = name.substr(0, name.find('.'));
  return t.dim() == 4 && module.size() >= 4 && module.compare(module.size() - 4, 4, "attn") == 0;
}

nlohmann::json read_json_file(const std::string& path, const std::string& what) {
  constexpr uint64_t kMaxBytes = 16u << 20;  // configs are a few kB
  try {
    return nlohmann::json::parse(read_file(path, kMaxBytes));
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(what + " '" + path + "': not valid JSON: " + e.what());
  } catch (const std::runtime_error& e) {  // missing, not a regular file, too large
    throw std::runtime_error(what + ": " + e.what());
  }
}

std::string pretty(const nlohmann::json& j) { return j.dump(2) + "\n"; }

}  // namespace

std::vector<std::string> diffusers_names(const std::string& name, int64_t levels) {
  const auto dot = name.find('.');
  if (dot == std::string::npos) throw std::logic_error("diffusers: parameter '" + name + "' has no module");
  const auto mapped = diffusers_module(name.substr(0, dot), levels);
  const std::string& module = mapped.first;  // (a structured binding cannot be captured in C++17)
  const BlockKind kind = mapped.second;
  const std::string rest = name.substr(dot + 1);  // "conv1.weight", "weight"
  const auto last = rest.rfind('.');
  const std::string leaf = last == std::string::npos ? "" : rest.substr(0, last);
  const std::string param = rest.substr(last == std::string::npos ? 0 : last + 1);
  auto named = [&](const std::string& sub) { return module + "." + sub + "." + param; };
  if (kind == BlockKind::residual) {
    if (leaf == "time_proj") return {named("time_emb_proj")};
    if (leaf == "shortcut") return {named("conv_shortcut")};
    return {named(leaf)};
  }
  if (kind == BlockKind::attention) {
    if (leaf == "norm") return {named("group_norm")};
    if (leaf == "proj_out") return {named("to_out.0")};
    if (leaf == "qkv") return {named("to_q"), named("to_k"), named("to_v")};
    throw std::logic_error("diffusers: no name for '" + name + "'");
  }
  return {leaf.empty() ? module + "." + param : named(leaf)};
}

std::vector<std::pair<std::string, torch::Tensor>> diffusers_state(const UNet& model) {
  const int64_t levels = model->config().levels();
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& [name, tensor] : named_state(*model)) {
    auto t = tensor.detach().to(torch::kCPU, torch::kFloat32).contiguous();  // channels-last weights too
    if (is_attention_conv_weight(name, t)) t = t.flatten(1);
    const auto names = diffusers_names(name, levels);
    const auto parts = t.chunk(static_cast<int64_t>(names.size()), 0);  // qkv: [q; k; v] along outputs
    for (size_t i = 0; i < names.size(); ++i) out.emplace_back(names[i], parts[i].contiguous());
  }
  return out;
}

void load_diffusers_state(UNet& model, const SafetensorsContent& content) {
  torch::NoGradGuard no_grad;
  const int64_t levels = model->config().levels();
  std::set<std::string> used;
  for (auto& [name, dst] : named_state(*model)) {
    const auto names = diffusers_names(name, levels);
    // diffusers' shape of each part: the outputs split in |names|, 1×1 convolutions as matrices
    auto shape = dst.sizes().vec();
    shape[0] /= static_cast<int64_t>(names.size());
    if (is_attention_conv_weight(name, dst)) shape.resize(2);
    std::vector<torch::Tensor> parts;
    for (const auto& n : names) {
      const auto& src = content.at(n);  // names the tensor and the file when it is missing
      if (src.sizes().vec() != shape) {
        std::ostringstream msg;
        msg << "'" << content.source << "': tensor '" << n << "' has shape " << src.sizes()
            << " but config.json implies " << torch::IntArrayRef(shape);
        throw std::runtime_error(msg.str());
      }
      if (!src.is_floating_point()) {
        throw std::runtime_error("'" + content.source + "': tensor '" + n + "' is not floating-point");
      }
      check_tensor_values(src, n, content.source);
      parts.push_back(src);
      used.insert(n);
    }
    dst.copy_(torch::cat(parts, 0).reshape(dst.sizes()));
  }
  for (const auto& [name, tensor] : content.tensors) {
    if (!used.count(name)) {
      throw std::runtime_error("'" + content.source + "': unexpected tensor '" + name +
                               "' (not part of the network config.json describes)");
    }
  }
}

std::string diffusers_unet_folder(const std::string& folder) {
  const fs::path root(folder);
  if (fs::exists(root / "model_index.json")) {
    const auto index = read_json_file((root / "model_index.json").string(), "model index");
    if (!index.is_object() || !index.contains("unet")) {
      throw std::runtime_error("model index '" + (root / "model_index.json").string() + "': no \"unet\" entry");
    }
    return (root / "unet").string();
  }
  if (fs::exists(root / "config.json")) return root.string();
  throw std::runtime_error("'" + folder + "': not a diffusers folder (no model_index.json or config.json)");
}

namespace {

// The checkpoint info of a diffusers folder whose unet/ is `unet`.
CheckpointInfo checkpoint_info_in(const std::string& folder, const fs::path& unet) {
  const auto unet_config = read_json_file((unet / "config.json").string(), "unet config");
  DiffusersUNet net;
  try {
    net = unet_config_from_diffusers(unet_config);
  } catch (const std::exception& e) {
    throw std::runtime_error("'" + (unet / "config.json").string() + "': " + e.what());
  }
  // A pipeline has its scheduler beside unet/; a bare unet folder gets DDPMScheduler's defaults.
  nlohmann::json scheduler = nlohmann::json::object();
  const fs::path scheduler_path = unet.parent_path() / "scheduler" / "scheduler_config.json";
  const bool pipeline = fs::exists(fs::path(folder) / "model_index.json");
  if (pipeline || fs::exists(scheduler_path)) scheduler = read_json_file(scheduler_path.string(), "scheduler config");
  DiffusersScheduler steps;
  try {
    steps = scheduler_from_diffusers(scheduler);
  } catch (const std::exception& e) {
    throw std::runtime_error("'" + scheduler_path.string() + "': " + e.what());
  }
  CheckpointInfo info;
  info.model = net.model;
  info.data = net.data;
  info.step = net.step;
  info.schedule = steps.schedule;
  info.objective = steps.objective;
  info.sampling = steps.sampling;
  info.image_condition = net.image_condition;
  try {
    check_image_condition_fits(info);
  } catch (const std::exception& e) {
    throw std::runtime_error("'" + (unet / "config.json").string() + "': " + e.what());
  }
  return info;
}

}  // namespace

CheckpointInfo diffusers_checkpoint_info(const std::string& folder) {
  return checkpoint_info_in(folder, diffusers_unet_folder(folder));
}

LoadedCheckpoint load_diffusers(const std::string& folder, torch::Device device) {
  const fs::path unet(diffusers_unet_folder(folder));
  LoadedCheckpoint out;
  out.info = checkpoint_info_in(folder, unet);
  const fs::path weights = unet / "diffusion_pytorch_model.safetensors";
  if (!fs::exists(weights)) {
    throw std::runtime_error("'" + weights.string() + "' is missing" +
                             (fs::exists(unet / "diffusion_pytorch_model.bin")
                                  ? " (only safetensors weights are read, not the pickled .bin)"
                                  : ""));
  }
  const auto content = load_safetensors(weights.string());
  out.model = UNet(out.info.model);
  load_diffusers_state(out.model, content);
  out.model->to(device);
  out.model->eval();
  return out;
}

void save_diffusers(const std::string& folder, const UNet& model, const CheckpointInfo& info) {
  const fs::path root(folder);
  fs::create_directories(root / "unet");
  fs::create_directories(root / "scheduler");
  // Everything that can fail on the config is computed before anything is written.
  const auto unet_config = diffusers_unet_config(model->config(), info.data, info.step, info.image_condition);
  const auto scheduler_config = diffusers_scheduler_config(info);
  save_safetensors((root / "unet" / "diffusion_pytorch_model.safetensors").string(), diffusers_state(model),
                   {{"format", "pt"}});
  write_file_atomic((root / "unet" / "config.json").string(), pretty(unet_config));
  write_file_atomic((root / "scheduler" / "scheduler_config.json").string(), pretty(scheduler_config));
  write_file_atomic((root / "model_index.json").string(), pretty(diffusers_model_index()));
}

}  // namespace diffuse
