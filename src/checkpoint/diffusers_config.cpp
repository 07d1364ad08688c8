// UNet2DModel and scheduler configs ↔ UNetConfig, ScheduleConfig, Objective and SamplingDefaults.
#include <cmath>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>

#include "diffuse/checkpoint/diffusers.h"
#include "diffuse/io/json_value.h"

namespace diffuse {

namespace {

// The spacings diffusers' schedulers know (its timestep_spacing); the DDIM paper's quadratic one is not among them.
bool diffusers_has(TimestepSpacing spacing) { return spacing != TimestepSpacing::quadratic; }

// The diffusers release whose format is written (and whose fixtures the tests compare with).
constexpr const char* kDiffusersVersion = "0.25.1";

const char* diffusers_prediction_type(Objective objective) {
  switch (objective) {
    case Objective::eps:
      return "epsilon";
    case Objective::x0:
      return "sample";
    case Objective::v:
      return "v_prediction";
  }
  return "epsilon";
}

// Reads typed keys of one JSON config; every error names the file's role, the key and the value.
class ConfigReader {
 public:
  ConfigReader(const nlohmann::json& j, std::string what) : j_(j), what_(std::move(what)) {
    if (!j_.is_object()) throw std::runtime_error(what_ + ": not a JSON object");
  }

  bool has(const std::string& key) const { return j_.contains(key) && !j_.at(key).is_null(); }
  const nlohmann::json& raw(const std::string& key) const { return j_.at(key); }

  [[noreturn]] void refuse(const std::string& key, const std::string& why) const {
    throw std::runtime_error(what_ + ": \"" + key + "\": " + (j_.contains(key) ? j_.at(key).dump() : "absent") + ": " +
                             why);
  }

  // The value of `key` as a T (io/json_value.h: of the right kind, else refused naming the key), or
  // `fallback` where the key is absent or null.
  template <class T>
  T get(const std::string& key, T fallback) const {
    return has(key) ? json_value<T>(j_.at(key), what_ + ": \"" + key + "\"") : fallback;
  }
  int64_t integer(const std::string& key, int64_t fallback) const { return get<int64_t>(key, fallback); }
  double number(const std::string& key, double fallback) const { return get<double>(key, fallback); }
  bool boolean(const std::string& key, bool fallback) const { return get<bool>(key, fallback); }
  std::string string(const std::string& key, const std::string& fallback) const { return get(key, fallback); }
  // A list that must be there and hold at least one entry.
  template <class T>
  std::vector<T> list(const std::string& key) const {
    auto out = get<std::vector<T>>(key, {});
    if (out.empty()) refuse(key, "expected a list of one entry or more");
    return out;
  }
  // A key that must hold one value (or be absent / null where `absent_ok`).
  template <class T>
  void require(const std::string& key, const T& expected, const std::string& why, bool absent_ok = true) const {
    if (!has(key)) {
      if (absent_ok) return;
      refuse(key, why);
    }
    if (j_.at(key) != nlohmann::json(expected)) refuse(key, why);
  }
  // Keys outside `known` (private "_" keys aside) are refused.
  void only(const std::set<std::string>& known) const {
    for (const auto& item : j_.items()) {
      if (item.key().empty() || item.key()[0] == '_' || known.count(item.key())) continue;
      refuse(item.key(), "not a key of the DDPM family's UNet2DModel (unsupported)");
    }
  }

 private:
  const nlohmann::json& j_;
  std::string what_;
};

const std::set<std::string> kUNetKeys = {
    "act_fn", "add_attention", "attention_head_dim", "attn_norm_num_groups", "block_out_channels",
    "center_input_sample", "class_embed_type", "down_block_types", "downsample_padding", "downsample_type",
    "dropout", "flip_sin_to_cos", "freq_shift", "in_channels", "layers_per_block", "mid_block_scale_factor",
    "norm_eps", "norm_num_groups", "num_class_embeds", "num_train_timesteps", "out_channels",
    "resnet_time_scale_shift", "sample_size", "time_embedding_dim", "time_embedding_type", "up_block_types",
    "upsample_type"};

}  // namespace

DiffusersUNet unet_config_from_diffusers(const nlohmann::json& j) {
  const ConfigReader r(j, "unet config");
  r.require("_class_name", "UNet2DModel", "only UNet2DModel is read");
  r.only(kUNetKeys);
  r.require("act_fn", "silu", "only silu is built");
  r.require("time_embedding_type", "positional", "only the sinusoidal (positional) embedding is built");
  r.require("class_embed_type", nullptr, "only a class table (num_class_embeds) is built");
  r.require("resnet_time_scale_shift", "default", "only the additive time shift (default) is built");
  r.require("center_input_sample", false, "inputs are taken in [-1, 1] as they are");
  r.require("mid_block_scale_factor", 1, "only 1 is built");
  r.require("downsample_type", "conv", "only the strided convolution is built");
  r.require("upsample_type", "conv", "only nearest upsampling + convolution is built");

  UNetConfig c;
  c.name = "diffusers";
  const auto widths = r.list<int64_t>("block_out_channels");
  c.channels = widths[0];
  c.channel_mult.clear();
  for (int64_t w : widths) {
    if (c.channels <= 0 || w % c.channels != 0) {
      r.refuse("block_out_channels", "every width must be a multiple of the first");
    }
    c.channel_mult.push_back(w / c.channels);
  }
  const int64_t levels = static_cast<int64_t>(widths.size());
  if (r.has("time_embedding_dim") && r.integer("time_embedding_dim", 0) != c.time_embed_dim()) {
    r.refuse("time_embedding_dim", "only 4 x block_out_channels[0] is built");
  }
  const int64_t out_channels = r.integer("out_channels", 3);
  const int64_t in_channels = r.integer("in_channels", 3);
  if (in_channels < out_channels) r.refuse("in_channels", "fewer than out_channels");
  c.in_channels = out_channels;
  c.extra_in_channels = in_channels - out_channels;  // condition channels concatenated to x_t
  if (r.has("sample_size") && r.raw("sample_size").is_array()) {
    const auto size = r.list<int64_t>("sample_size");
    if (size.size() != 2 || size[0] != size[1]) r.refuse("sample_size", "only square images are built");
    c.image_size = size[0];
  } else {
    c.image_size = r.integer("sample_size", 32);
  }
  c.num_res_blocks = r.integer("layers_per_block", 2);
  c.dropout = r.number("dropout", 0.0);
  c.norm_groups = r.integer("norm_num_groups", 32);
  if (r.has("attn_norm_num_groups") && r.integer("attn_norm_num_groups", 0) != c.norm_groups) {
    r.refuse("attn_norm_num_groups", "attention's GroupNorm must have norm_num_groups groups");
  }
  c.norm_eps = r.number("norm_eps", 1e-5);
  c.flip_sin_to_cos = r.boolean("flip_sin_to_cos", true);
  c.freq_shift = r.integer("freq_shift", 0);
  c.attention_head_dim = r.has("attention_head_dim") ? r.integer("attention_head_dim", 0) : 0;
  if (r.has("attention_head_dim") && c.attention_head_dim <= 0) r.refuse("attention_head_dim", "must be positive");
  const int64_t padding = r.integer("downsample_padding", 1);
  if (padding != 0 && padding != 1) r.refuse("downsample_padding", "0 (asymmetric pad) or 1 only");
  c.downsample_padding = padding == 0 ? DownsamplePadding::asymmetric : DownsamplePadding::symmetric;
  c.mid_attention = r.boolean("add_attention", true);

  // Attention per level, said twice (down blocks, and up blocks in reverse order): both must agree.
  const auto down = r.list<std::string>("down_block_types");
  const auto up = r.list<std::string>("up_block_types");
  if (static_cast<int64_t>(down.size()) != levels) r.refuse("down_block_types", "one per block_out_channels entry");
  if (static_cast<int64_t>(up.size()) != levels) r.refuse("up_block_types", "one per block_out_channels entry");
  c.attention_resolutions.clear();
  int64_t resolution = c.image_size;
  for (int64_t level = 0; level < levels; ++level) {
    if (down[level] != "DownBlock2D" && down[level] != "AttnDownBlock2D") {
      r.refuse("down_block_types", "block '" + down[level] + "': only DownBlock2D and AttnDownBlock2D are built");
    }
    const auto& mirror = up[levels - 1 - level];
    if (mirror != "UpBlock2D" && mirror != "AttnUpBlock2D") {
      r.refuse("up_block_types", "block '" + mirror + "': only UpBlock2D and AttnUpBlock2D are built");
    }
    const bool attention = down[level] == "AttnDownBlock2D";
    if (attention != (mirror == "AttnUpBlock2D")) {
      r.refuse("up_block_types", "attention must sit at the same levels as in down_block_types");
    }
    if (attention) c.attention_resolutions.push_back(resolution);
    resolution = c.downsampled(resolution);
  }

  c.num_classes = r.has("num_class_embeds") ? r.integer("num_class_embeds", 0) : 0;
  c.null_class = c.num_classes == 0;  // diffusers' class table has no row for "no label"
  DiffusersUNet out;
  if (r.has("_diffuse")) {  // written by diffusers_unet_config: the table's last row is ∅
    const ConfigReader own(r.raw("_diffuse"), "unet config \"_diffuse\"");
    if (own.boolean("null_class", false) && c.num_classes > 0) {
      c.null_class = true;
      c.num_classes -= 1;
    }
    out.data.name = own.string("data", "");
    out.step = own.integer("step", 0);
    if (own.has("image_condition")) {
      try {
        out.image_condition = image_condition_from_json(own.raw("image_condition"));
      } catch (const std::exception& e) {
        throw std::runtime_error(std::string("unet config \"_diffuse\": image_condition: ") + e.what());
      }
    }
  }
  out.data.channels = c.in_channels;
  out.data.image_size = c.image_size;
  out.data.num_classes = c.num_classes;
  try {
    validate(c);
  } catch (const std::invalid_argument& e) {
    throw std::runtime_error(std::string("unet config: ") + e.what());
  }
  out.model = c;
  return out;
}

nlohmann::json diffusers_unet_config(const UNetConfig& c, const DataInfo& data, int64_t step,
                                     const std::optional<ImageCondition>& image_condition) {
  if (c.cross_attention_dim != 0) throw std::runtime_error("export: cross-attention has no UNet2DModel equivalent");
  std::vector<int64_t> widths;
  std::vector<std::string> down, up(c.levels());
  int64_t resolution = c.image_size;
  for (int64_t level = 0; level < c.levels(); ++level) {
    widths.push_back(c.level_channels(level));
    const bool attention = c.has_attention_at(resolution);
    down.push_back(attention ? "AttnDownBlock2D" : "DownBlock2D");
    up[c.levels() - 1 - level] = attention ? "AttnUpBlock2D" : "UpBlock2D";
    resolution = c.downsampled(resolution);
  }
  nlohmann::json j = {
      {"_class_name", "UNet2DModel"},
      {"_diffusers_version", kDiffusersVersion},
      {"act_fn", "silu"},
      {"add_attention", c.mid_attention},
      {"attention_head_dim", c.attention_head_dim > 0 ? nlohmann::json(c.attention_head_dim) : nlohmann::json()},
      {"attn_norm_num_groups", nullptr},
      {"block_out_channels", widths},
      {"center_input_sample", false},
      {"class_embed_type", nullptr},
      {"down_block_types", down},
      {"downsample_padding", c.downsample_padding == DownsamplePadding::asymmetric ? 0 : 1},
      {"downsample_type", "conv"},
      {"dropout", c.dropout},
      {"flip_sin_to_cos", c.flip_sin_to_cos},
      {"freq_shift", c.freq_shift},
      {"in_channels", c.in_channels + c.extra_in_channels},
      {"layers_per_block", c.num_res_blocks},
      {"mid_block_scale_factor", 1},
      {"norm_eps", c.norm_eps},
      {"norm_num_groups", c.norm_groups},
      {"num_class_embeds", c.num_classes > 0 ? nlohmann::json(c.label_rows()) : nlohmann::json()},
      {"num_train_timesteps", nullptr},
      {"out_channels", c.in_channels},
      {"resnet_time_scale_shift", "default"},
      {"sample_size", c.image_size},
      {"time_embedding_type", "positional"},
      {"up_block_types", up},
      {"upsample_type", "conv"}};
  // Kept for a round trip through diffusers, which ignores "_" keys: the data set and step,
  // whether the class table's last row is the "no label" class (label num_classes there too), and
  // what an image-conditional model's extra input channels hold.
  j["_diffuse"] = {{"data", data.name}, {"step", step}, {"null_class", c.num_classes > 0 && c.null_class}};
  if (image_condition) j["_diffuse"]["image_condition"] = to_json(*image_condition);
  return j;
}

nlohmann::json diffusers_model_index() {
  return {{"_class_name", "DDPMPipeline"},
          {"_diffusers_version", kDiffusersVersion},
          {"scheduler", {"diffusers", "DDPMScheduler"}},
          {"unet", {"diffusers", "UNet2DModel"}}};
}

DiffusersScheduler scheduler_from_diffusers(const nlohmann::json& j) {
  const ConfigReader r(j, "scheduler config");
  DiffusersScheduler out;
  auto& s = out.schedule;
  s.timesteps = r.integer("num_train_timesteps", 1000);
  if (s.timesteps < 1 || s.timesteps > kMaxTimesteps) {
    r.refuse("num_train_timesteps", "must be in [1, " + std::to_string(kMaxTimesteps) + "]");
  }
  s.beta_start = r.number("beta_start", 1e-4);
  s.beta_end = r.number("beta_end", 0.02);
  if (!(s.beta_start > 0 && s.beta_start <= s.beta_end && s.beta_end < 1)) {
    r.refuse("beta_end", "need 0 < beta_start <= beta_end < 1");
  }
  const auto kind = r.string("beta_schedule", "linear");
  if (kind == "linear") {
    s.kind = BetaSchedule::linear;
  } else if (kind == "scaled_linear") {
    s.kind = BetaSchedule::scaled_linear;
  } else if (kind == "squaredcos_cap_v2") {  // ᾱ(t) = cos²((t/T + 0.008)/1.008 · π/2), β capped at 0.999
    s.kind = BetaSchedule::cosine;
    s.cosine_s = 0.008;
  } else {
    r.refuse("beta_schedule", "linear, scaled_linear or squaredcos_cap_v2");
  }
  if (r.has("trained_betas")) {  // replaces beta_schedule
    s.kind = BetaSchedule::trained;
    s.trained_betas = r.list<double>("trained_betas");
    if (static_cast<int64_t>(s.trained_betas.size()) != s.timesteps) {
      r.refuse("trained_betas", "expected num_train_timesteps numbers");
    }
    for (double b : s.trained_betas) {
      if (!(b > 0 && b < 1)) r.refuse("trained_betas", "each in (0, 1)");
    }
  }
  const auto prediction = r.string("prediction_type", "epsilon");
  if (prediction == "epsilon") {
    out.objective = Objective::eps;
  } else if (prediction == "sample") {
    out.objective = Objective::x0;
  } else if (prediction == "v_prediction") {
    out.objective = Objective::v;
  } else {
    r.refuse("prediction_type", "epsilon, sample or v_prediction");
  }
  const auto variance = r.string("variance_type", "fixed_small");
  if (variance != "fixed_small" && variance != "fixed_large") {
    r.refuse("variance_type", "fixed_small (beta-tilde) or fixed_large (beta); learned variances are not built");
  }
  auto& d = out.sampling;
  d.ddpm_large_variance = variance == "fixed_large";
  d.clip_x0 = r.boolean("clip_sample", true);
  if (d.clip_x0 && r.number("clip_sample_range", 1.0) != 1.0) r.refuse("clip_sample_range", "1.0 only");
  d.clipped_eps = ClippedEps::keep;  // diffusers' schedulers step with the network's ε̂
  std::optional<TimestepSpacing> spacing;
  try {
    spacing = timestep_spacing_from_string(r.string("timestep_spacing", "leading"));
  } catch (const std::invalid_argument&) {  // refused below, in diffusers' terms
  }
  if (!spacing || !diffusers_has(*spacing)) r.refuse("timestep_spacing", "leading, trailing or linspace");
  d.spacing = *spacing;
  if (r.integer("steps_offset", 0) != 0) r.refuse("steps_offset", "0 only");
  if (r.boolean("thresholding", false)) r.refuse("thresholding", "dynamic thresholding is not built");
  if (r.boolean("rescale_betas_zero_snr", false)) r.refuse("rescale_betas_zero_snr", "not built");
  if (!r.boolean("set_alpha_to_one", true)) r.refuse("set_alpha_to_one", "the last step goes to alpha-bar 1 here");
  return out;
}

nlohmann::json diffusers_scheduler_config(const CheckpointInfo& info) {
  const auto& s = info.schedule;
  if (!diffusers_has(info.sampling.spacing)) {
    throw std::runtime_error("export: diffusers has no quadratic timestep spacing (leading, trailing or linspace)");
  }
  std::string kind = "linear";  // ignored by diffusers where trained_betas is given
  if (s.kind == BetaSchedule::scaled_linear) kind = "scaled_linear";
  if (s.kind == BetaSchedule::cosine) {
    if (s.cosine_s != 0.008) throw std::runtime_error("export: diffusers' cosine schedule has s = 0.008 only");
    kind = "squaredcos_cap_v2";
  }
  return {{"_class_name", "DDPMScheduler"},
          {"_diffusers_version", kDiffusersVersion},
          {"beta_end", s.beta_end},
          {"beta_schedule", kind},
          {"beta_start", s.beta_start},
          {"clip_sample", info.sampling.clip_x0},
          {"clip_sample_range", 1.0},
          {"dynamic_thresholding_ratio", 0.995},
          {"num_train_timesteps", s.timesteps},
          {"prediction_type", diffusers_prediction_type(info.objective)},
          {"rescale_betas_zero_snr", false},
          {"sample_max_value", 1.0},
          {"steps_offset", 0},
          {"thresholding", false},
          {"timestep_spacing", to_string(info.sampling.spacing)},
          {"trained_betas", s.kind == BetaSchedule::trained ? nlohmann::json(s.trained_betas) : nlohmann::json()},
          {"variance_type", info.sampling.ddpm_large_variance ? "fixed_large" : "fixed_small"}};
}

}  // namespace diffuse
