#include "diffuse/model/unet_config.h"

#include <stdexcept>

namespace diffuse {

std::vector<std::string> unet_config_names() { return {"tiny", "mnist", "ddpm-cifar10"}; }

UNetConfig unet_config_by_name(const std::string& name, int64_t in_channels, int64_t image_size) {
  UNetConfig c;
  c.name = name;
  c.in_channels = in_channels;
  c.image_size = image_size;
  if (name == "tiny") {  // a few thousand parameters: for tests that train and sample in seconds
    c.channels = 8;
    c.channel_mult = {1, 2};
    c.num_res_blocks = 1;
    c.attention_resolutions = {downsampled_size(image_size)};
    c.dropout = 0.0;
    c.norm_groups = 4;
  } else if (name == "mnist") {  // 28 → 14 → 7, attention only at 7×7 (49 tokens: cheap)
    c.channels = 32;
    c.channel_mult = {1, 2, 2};
    c.num_res_blocks = 1;
    c.attention_resolutions = {downsampled_size(downsampled_size(image_size))};
    c.dropout = 0.0;
    c.norm_groups = 8;
  } else if (name == "ddpm-cifar10") {  // Ho et al. 2020, appendix B
    c.channels = 128;
    c.channel_mult = {1, 2, 2, 2};
    c.num_res_blocks = 2;
    c.attention_resolutions = {16};
    c.dropout = 0.1;
    c.norm_groups = 32;
  } else {
    std::string known;
    for (const auto& n : unet_config_names()) known += (known.empty() ? "" : ", ") + n;
    throw std::invalid_argument("unknown model '" + name + "' (known: " + known + ")");
  }
  return c;
}

nlohmann::json to_json(const UNetConfig& c) {
  return {{"name", c.name},
          {"in_channels", c.in_channels},
          {"image_size", c.image_size},
          {"channels", c.channels},
          {"channel_mult", c.channel_mult},
          {"num_res_blocks", c.num_res_blocks},
          {"attention_resolutions", c.attention_resolutions},
          {"dropout", c.dropout},
          {"norm_groups", c.norm_groups},
          {"num_classes", c.num_classes}};
}

UNetConfig unet_config_from_json(const nlohmann::json& j) {
  UNetConfig c;
  auto get = [&](const char* key, auto& field) {
    if (!j.contains(key)) throw std::runtime_error(std::string("model config: missing field '") + key + "'");
    try {
      j.at(key).get_to(field);
    } catch (const nlohmann::json::exception& e) {
      throw std::runtime_error(std::string("model config: bad field '") + key + "': " + e.what());
    }
  };
  get("name", c.name);
  get("in_channels", c.in_channels);
  get("image_size", c.image_size);
  get("channels", c.channels);
  get("channel_mult", c.channel_mult);
  get("num_res_blocks", c.num_res_blocks);
  get("attention_resolutions", c.attention_resolutions);
  get("dropout", c.dropout);
  get("norm_groups", c.norm_groups);
  get("num_classes", c.num_classes);
  if (c.in_channels < 1 || c.image_size < 1 || c.channels < 1 || c.channel_mult.empty() || c.num_res_blocks < 1) {
    throw std::runtime_error("model config: sizes must be positive");
  }
  return c;
}

}  // namespace diffuse
