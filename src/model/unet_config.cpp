#include "diffuse/model/unet_config.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <stdexcept>
#include <type_traits>

#include "diffuse/io/json_value.h"

namespace diffuse {

std::string to_string(DownsamplePadding padding) {
  return padding == DownsamplePadding::symmetric ? "symmetric" : "asymmetric";
}

DownsamplePadding downsample_padding_from_string(const std::string& name) {
  if (name == "symmetric") return DownsamplePadding::symmetric;
  if (name == "asymmetric") return DownsamplePadding::asymmetric;
  throw std::invalid_argument("unknown downsample padding '" + name + "' (expected symmetric or asymmetric)");
}

bool UNetConfig::has_attention_at(int64_t resolution) const {
  return std::find(attention_resolutions.begin(), attention_resolutions.end(), resolution) !=
         attention_resolutions.end();
}

bool UNetConfig::has_cross_attention_at(int64_t resolution) const {
  return text_conditional() && std::find(cross_attention_resolutions.begin(), cross_attention_resolutions.end(),
                                         resolution) != cross_attention_resolutions.end();
}

UNetConfig with_text(UNetConfig c, int64_t vocab_size, int64_t max_tokens) {
  c.cross_attention_dim = std::max<int64_t>(c.channels, 32);
  c.text_vocab_size = vocab_size;
  c.text_max_tokens = max_tokens;
  c.text_layers = 2;
  c.text_heads = 4;
  c.cross_attention_resolutions.clear();
  int64_t resolution = c.image_size;
  for (int64_t level = 1; level < c.levels(); ++level) {
    resolution = c.downsampled(resolution);
    c.cross_attention_resolutions.push_back(resolution);
  }
  c.mid_cross_attention = true;
  validate(c);
  return c;
}

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
    c.attention_resolutions = {c.downsampled(image_size)};
    c.dropout = 0.0;
    c.norm_groups = 4;
  } else if (name == "mnist") {  // 28 → 14 → 7, attention only at 7×7 (49 tokens: cheap)
    c.channels = 32;
    c.channel_mult = {1, 2, 2};
    c.num_res_blocks = 1;
    c.attention_resolutions = {c.downsampled(c.downsampled(image_size))};
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

namespace {

// "model.FIELD = VALUE: RULE"
template <class T>
[[noreturn]] void refuse(const char* field, const T& value, const std::string& rule) {
  std::ostringstream out;
  out << "model config: " << field << " = " << value << ": " << rule;
  throw std::invalid_argument(out.str());
}

template <class T>
void check_range(const char* field, T value, T lo, T hi) {
  if (!(value >= lo && value <= hi)) {
    std::ostringstream rule;
    rule << "must be in [" << lo << ", " << hi << "]";
    refuse(field, value, rule.str());
  }
}

}  // namespace

void validate(const UNetConfig& c) {
  // Limits well above any network that trains on one machine, and low enough that no field
  // alone asks for gigabytes before a weight is read.
  check_range<int64_t>("in_channels", c.in_channels, 1, 64);
  check_range<int64_t>("image_size", c.image_size, 1, 1024);
  check_range<int64_t>("channels", c.channels, 1, 1024);
  if (c.channel_mult.empty() || c.channel_mult.size() > 8)
    refuse("channel_mult", c.channel_mult.size(), "must have 1 to 8 levels");
  for (int64_t m : c.channel_mult) check_range<int64_t>("channel_mult[i]", m, 1, 16);
  check_range<int64_t>("num_res_blocks", c.num_res_blocks, 1, 16);
  if (c.attention_resolutions.size() > 16)
    refuse("attention_resolutions", c.attention_resolutions.size(), "at most 16 entries");
  check_range("dropout", c.dropout, 0.0, 0.999);
  check_range<int64_t>("norm_groups", c.norm_groups, 1, 1024);
  check_range("norm_eps", c.norm_eps, 1e-12, 1.0);
  check_range<int64_t>("num_classes", c.num_classes, 0, 100000);
  check_range<int64_t>("extra_in_channels", c.extra_in_channels, 0, 64);
  if (c.extra_in_channels > 0 && c.num_classes > 0)
    refuse("extra_in_channels", c.extra_in_channels, "a class-conditional model takes no condition channels");
  check_range<int64_t>("freq_shift", c.freq_shift, 0, 1);
  if (c.channels % 2 != 0)
    refuse("channels", c.channels, "must be even (the sinusoidal embedding has sin and cos halves)");
  if (c.channels / 2 - c.freq_shift < 1) refuse("channels", c.channels, "too small for the time embedding");
  check_range<int64_t>("cross_attention_dim", c.cross_attention_dim, 0, 1024);
  if (c.text_conditional()) {
    check_range<int64_t>("text_vocab_size", c.text_vocab_size, 4, 65536);
    check_range<int64_t>("text_max_tokens", c.text_max_tokens, 2, 256);
    check_range<int64_t>("text_layers", c.text_layers, 0, 12);
    check_range<int64_t>("text_heads", c.text_heads, 1, 64);
    if (c.cross_attention_dim % c.text_heads != 0)
      refuse("text_heads", c.text_heads, "must divide cross_attention_dim " + std::to_string(c.cross_attention_dim));
    if (c.num_classes > 0) refuse("num_classes", c.num_classes, "a text-conditional model takes no class labels");
    if (c.extra_in_channels > 0)
      refuse("extra_in_channels", c.extra_in_channels, "a text-conditional model takes no condition channels");
    if (c.cross_attention_resolutions.size() > 16)
      refuse("cross_attention_resolutions", c.cross_attention_resolutions.size(), "at most 16 entries");
  }
  for (int64_t level = 0; level < c.levels(); ++level) {
    const int64_t width = c.level_channels(level);
    if (width % c.norm_groups != 0) {
      refuse("norm_groups", c.norm_groups, "must divide every width; level " + std::to_string(level) + " has " +
                                               std::to_string(width) + " channels");
    }
    if (c.attention_head_dim < 0 || (c.attention_head_dim > 0 && width % c.attention_head_dim != 0)) {
      refuse("attention_head_dim", c.attention_head_dim, "must be 0 (one head) or divide every width; level " +
                                                             std::to_string(level) + " has " + std::to_string(width));
    }
  }
  if (c.channels % c.norm_groups != 0) refuse("norm_groups", c.norm_groups, "must divide channels");
}

nlohmann::json to_json(const UNetConfig& c) {
  return {{"name", c.name},
          {"in_channels", c.in_channels},
          {"image_size", c.image_size},
          {"channels", c.channels},
          {"channel_mult", c.channel_mult},
          {"num_res_blocks", c.num_res_blocks},
          {"attention_resolutions", c.attention_resolutions},
          {"mid_attention", c.mid_attention},
          {"attention_head_dim", c.attention_head_dim},
          {"dropout", c.dropout},
          {"norm_groups", c.norm_groups},
          {"norm_eps", c.norm_eps},
          {"flip_sin_to_cos", c.flip_sin_to_cos},
          {"freq_shift", c.freq_shift},
          {"downsample_padding", to_string(c.downsample_padding)},
          {"num_classes", c.num_classes},
          {"null_class", c.null_class},
          {"extra_in_channels", c.extra_in_channels},
          {"cross_attention_dim", c.cross_attention_dim},
          {"text_vocab_size", c.text_vocab_size},
          {"text_max_tokens", c.text_max_tokens},
          {"text_layers", c.text_layers},
          {"text_heads", c.text_heads},
          {"cross_attention_resolutions", c.cross_attention_resolutions},
          {"mid_cross_attention", c.mid_cross_attention}};
}

UNetConfig unet_config_from_json(const nlohmann::json& j) {
  if (!j.is_object()) throw std::runtime_error("model config: not a JSON object");
  UNetConfig c;
  auto read = [&](const char* key, auto& field) {
    field = json_value<std::decay_t<decltype(field)>>(j.at(key), std::string("model config: bad field '") + key + "'");
  };
  auto get = [&](const char* key, auto& field) {
    if (!j.contains(key)) throw std::runtime_error(std::string("model config: missing field '") + key + "'");
    read(key, field);
  };
  auto get_optional = [&](const char* key, auto& field) {  // fields added with the general config
    if (j.contains(key)) read(key, field);
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
  get_optional("mid_attention", c.mid_attention);
  get_optional("attention_head_dim", c.attention_head_dim);
  get_optional("norm_eps", c.norm_eps);
  get_optional("flip_sin_to_cos", c.flip_sin_to_cos);
  get_optional("freq_shift", c.freq_shift);
  std::string padding = to_string(c.downsample_padding);
  get_optional("downsample_padding", padding);
  try {
    c.downsample_padding = downsample_padding_from_string(padding);
  } catch (const std::invalid_argument& e) {
    throw std::runtime_error(std::string("model config: ") + e.what());
  }
  get_optional("null_class", c.null_class);
  get_optional("extra_in_channels", c.extra_in_channels);
  get_optional("cross_attention_dim", c.cross_attention_dim);
  get_optional("text_vocab_size", c.text_vocab_size);
  get_optional("text_max_tokens", c.text_max_tokens);
  get_optional("text_layers", c.text_layers);
  get_optional("text_heads", c.text_heads);
  get_optional("cross_attention_resolutions", c.cross_attention_resolutions);
  get_optional("mid_cross_attention", c.mid_cross_attention);
  validate(c);
  return c;
}

}  // namespace diffuse
