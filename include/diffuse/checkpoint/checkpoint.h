// Self-describing model checkpoints: one safetensors file whose __metadata__ holds, as JSON
// strings, everything needed to rebuild the model and its diffusion process:
//   "format"    "diffuse-checkpoint-1"
//   "model"     the UNetConfig
//   "schedule"  {"kind", "timesteps", "beta_start", "beta_end"}
//   "objective" "eps" | "x0"
//   "data"      {"name", "channels", "image_size", "num_classes"}
//   "step"      training step the weights come from
//   "sampling"  {"spacing", "clip_x0", "clipped_eps", "ddpm_variance"} (optional: the defaults)
//   "tokenizer" the prompt's tokenizer (text/tokenizer.h), for text-conditional models only
// Tensors are the network's parameters under their module paths (e.g. "down_0_0_res.conv1.weight").
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "diffuse/diffusion/gaussian_diffusion.h"
#include "diffuse/diffusion/image_condition.h"
#include "diffuse/io/safetensors.h"
#include "diffuse/model/unet.h"
#include "diffuse/schedule/noise_schedule.h"
#include "diffuse/schedule/timestep_spacing.h"
#include "diffuse/text/tokenizer.h"

namespace diffuse {

struct DataInfo {
  std::string name;
  int64_t channels = 1;
  int64_t image_size = 28;
  int64_t num_classes = 0;
};

// How the model's own pipeline samples: a diffusers scheduler config says it, a model trained
// here has these defaults. Sampler flags given on the command line override it.
struct SamplingDefaults {
  TimestepSpacing spacing = TimestepSpacing::leading;
  bool clip_x0 = true;
  ClippedEps clipped_eps = ClippedEps::recompute;
  bool ddpm_large_variance = false;  // DDPM σ² = β_t (diffusers' fixed_large) instead of β̃_t
};

struct CheckpointInfo {
  UNetConfig model;
  ScheduleConfig schedule;
  Objective objective = Objective::eps;
  DataInfo data;
  int64_t step = 0;
  SamplingDefaults sampling;
  std::optional<Tokenizer> tokenizer;  // text-conditional models: what turns a prompt into ids
  std::optional<ImageCondition> image_condition;  // image-conditional models: what the extra input channels hold
};

// A text-conditional model has a tokenizer whose vocabulary and row length are its encoder's;
// other models have none. Throws saying which rule is broken.
void check_tokenizer_fits(const CheckpointInfo& info);
// An image condition's channels are the model's extra input channels, and its factor divides the
// image size. Throws saying which rule is broken.
void check_image_condition_fits(const CheckpointInfo& info);
nlohmann::json to_json(const ImageCondition& condition);
ImageCondition image_condition_from_json(const nlohmann::json& j);

nlohmann::json to_json(const ScheduleConfig& config);
ScheduleConfig schedule_config_from_json(const nlohmann::json& j);
nlohmann::json to_json(const SamplingDefaults& defaults);
SamplingDefaults sampling_defaults_from_json(const nlohmann::json& j);

std::map<std::string, std::string> checkpoint_metadata(const CheckpointInfo& info);
CheckpointInfo checkpoint_info_from_metadata(const std::map<std::string, std::string>& metadata,
                                             const std::string& source);

// A metadata field holding a whole number ≥ 0 ("5abc", "-1", "1e3" are refused, naming the key).
int64_t metadata_count(const std::map<std::string, std::string>& metadata, const std::string& key,
                       const std::string& source);
// Throws naming the tensor and file if a floating-point tensor holds NaN or Inf.
void check_tensor_values(const torch::Tensor& t, const std::string& name, const std::string& source);

// The module's parameters and buffers by name, for writing.
std::vector<std::pair<std::string, torch::Tensor>> named_state(const torch::nn::Module& module);
// Copies tensors into the module's parameters and buffers; every name must be present with the
// right shape, floating-point where the module's is, and finite (errors name the file and the tensor).
void load_named_state(torch::nn::Module& module, const SafetensorsContent& content, const std::string& prefix = "");

void save_checkpoint(const std::string& path, const UNet& model, const CheckpointInfo& info);  // atomic

struct LoadedCheckpoint {
  CheckpointInfo info;
  UNet model{nullptr};
};
// Rebuilds the network from the metadata and loads its weights; errors name the file. A folder
// is read as diffusers' format (checkpoint/diffusers.h): a pipeline or a bare unet/ folder.
LoadedCheckpoint load_checkpoint(const std::string& path, torch::Device device);
// The same from a safetensors file already read (`path` names it in errors), on the CPU.
LoadedCheckpoint checkpoint_from_safetensors(const SafetensorsContent& content, const std::string& path);

}  // namespace diffuse
