// Configuration of the DDPM U-Net, named presets, and its JSON form (stored in checkpoints).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace diffuse {

struct UNetConfig {
  std::string name = "custom";
  int64_t in_channels = 1;     // image channels (the output has the same number)
  int64_t image_size = 28;     // height = width
  int64_t channels = 64;       // base width; level i has channels · channel_mult[i]
  std::vector<int64_t> channel_mult{1, 2, 2};
  int64_t num_res_blocks = 2;  // residual blocks per level on the way down (one more on the way up)
  std::vector<int64_t> attention_resolutions{7};  // spatial sizes that get self-attention
  double dropout = 0.1;
  int64_t norm_groups = 32;    // GroupNorm groups (must divide every width)
  int64_t num_classes = 0;     // > 0: class-conditional, label `num_classes` means "no label"

  int64_t time_embed_dim() const { return channels * 4; }
};

// Names: "tiny" (tests), "mnist" (28×28 grey, the default job), "ddpm-cifar10" (the DDPM
// paper's CIFAR-10 network, 35.7M parameters). Image size and channels come from the data.
UNetConfig unet_config_by_name(const std::string& name, int64_t in_channels, int64_t image_size);
std::vector<std::string> unet_config_names();

nlohmann::json to_json(const UNetConfig& config);
UNetConfig unet_config_from_json(const nlohmann::json& j);  // throws naming the bad field

// Spatial size after one stride-2 3×3 convolution with padding 1: ⌈n/2⌉.
inline int64_t downsampled_size(int64_t n) { return (n + 1) / 2; }

}  // namespace diffuse
