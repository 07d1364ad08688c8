// diffusers' format, read and written exactly, so that the DDPM paper's own models
// (google/ddpm-cifar10-32, google/ddpm-ema-church-256, …) sample here and models trained here
// load in Python with UNet2DModel.from_pretrained / DDPMPipeline.from_pretrained:
//
//   NAME/model_index.json                           {"_class_name": "DDPMPipeline", "unet": …, "scheduler": …}
//   NAME/unet/config.json                           UNet2DModel's config
//   NAME/unet/diffusion_pytorch_model.safetensors   its weights ({"format": "pt"}; F32 written, F16/BF16 read too)
//   NAME/scheduler/scheduler_config.json            DDPMScheduler's config
//
// A bare unet/ folder (config.json + weights) loads too, with DDPMScheduler's defaults. The two
// networks are the same network: diffusers' blocks map one to one onto the U-Net's modules, except
// that attention's q, k and v are three linear layers there and one 1×1 convolution here.
#pragma once

#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "diffuse/checkpoint/checkpoint.h"

namespace diffuse {

// UNet2DModel's config → UNetConfig. Only the DDPM family is accepted (Down/AttnDown/Up/AttnUp
// blocks, positional time embedding, SiLU, …); any other value is refused naming its key.
// Also reads the "_diffuse" block a model exported from here carries (its data and step, and what
// an image-conditional model's extra input channels hold).
struct DiffusersUNet {
  UNetConfig model;
  DataInfo data;
  int64_t step = 0;
  std::optional<ImageCondition> image_condition;
};
DiffusersUNet unet_config_from_diffusers(const nlohmann::json& config);
// The UNet2DModel config of a network (keys as diffusers 0.25 writes them), with a "_diffuse" block
// (ignored by diffusers) that keeps what diffusers' config has no key for.
nlohmann::json diffusers_unet_config(const UNetConfig& model, const DataInfo& data, int64_t step,
                                     const std::optional<ImageCondition>& image_condition = std::nullopt);

// model_index.json of a DDPMPipeline.
nlohmann::json diffusers_model_index();

// A scheduler config (DDPMScheduler, DDIMScheduler, and the keys the others share) → the
// schedule, the objective and the sampling defaults. Values with no equivalent are refused.
struct DiffusersScheduler {
  ScheduleConfig schedule;
  Objective objective = Objective::eps;
  SamplingDefaults sampling;
};
DiffusersScheduler scheduler_from_diffusers(const nlohmann::json& config);
// DDPMScheduler's config for a checkpoint's schedule, objective and sampling defaults.
nlohmann::json diffusers_scheduler_config(const CheckpointInfo& info);

// Diffusers' name of a parameter of the U-Net (e.g. "down_1_0_attn.norm.weight" →
// "down_blocks.1.attentions.0.group_norm.weight"); attention's fused "qkv" maps to three names.
std::vector<std::string> diffusers_names(const std::string& name, int64_t levels);
// The network's tensors under diffusers' names and shapes.
std::vector<std::pair<std::string, torch::Tensor>> diffusers_state(const UNet& model);
// Copies tensors named and shaped as diffusers has them into the network: every one must be
// there with the shape the config implies, and nothing else (errors name the tensor and file).
void load_diffusers_state(UNet& model, const SafetensorsContent& content);

// The folder's unet/ (a pipeline) or the folder itself (a bare unet folder); errors name what is missing.
std::string diffusers_unet_folder(const std::string& folder);
LoadedCheckpoint load_diffusers(const std::string& folder, torch::Device device);
CheckpointInfo diffusers_checkpoint_info(const std::string& folder);
// Writes a DDPMPipeline folder (created if absent; files written atomically).
void save_diffusers(const std::string& folder, const UNet& model, const CheckpointInfo& info);

}  // namespace diffuse
