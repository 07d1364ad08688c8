// Configuration of the U-Net, named presets, and its JSON form (stored in checkpoints).
//
// One config describes the DDPM family: the widths of the levels (channels · channel_mult),
// residual blocks and attention per level, heads, GroupNorm, the time embedding's conventions and
// the downsampling's padding, class labels and extra input channels, so that networks trained
// elsewhere (diffusers' UNet2DModel, the DDPM paper's TensorFlow code) are the same network here.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace diffuse {

// How a stride-2 3×3 convolution pads its input: one pixel on every side (H → ⌈H/2⌉), or one
// pixel on the right and bottom only, as the DDPM paper's code and diffusers' downsample_padding
// = 0 do (H → ⌊H/2⌋; on even sizes both give H/2, but the kernel sits one pixel further on).
enum class DownsamplePadding { symmetric, asymmetric };
std::string to_string(DownsamplePadding padding);
DownsamplePadding downsample_padding_from_string(const std::string& name);  // throws on unknown names

struct UNetConfig {
  std::string name = "custom";
  int64_t in_channels = 1;     // image channels (the output has the same number)
  int64_t image_size = 28;     // height = width
  int64_t channels = 64;       // base width; level i has channels · channel_mult[i]
  std::vector<int64_t> channel_mult{1, 2, 2};
  int64_t num_res_blocks = 2;  // residual blocks per level on the way down (one more on the way up)
  std::vector<int64_t> attention_resolutions{7};  // spatial sizes whose blocks get self-attention
  bool mid_attention = true;   // self-attention between the middle block's two residual blocks
  int64_t attention_head_dim = 0;  // channels per head; 0: one head over all channels
  double dropout = 0.1;
  int64_t norm_groups = 32;    // GroupNorm groups (must divide every width)
  double norm_eps = 1e-5;      // GroupNorm ε
  // Sinusoidal time embedding: emb = [sin(t f_k), cos(t f_k)], f_k = 10000^(−k/(h − freq_shift)),
  // h = channels/2; flip_sin_to_cos puts the cosines first.
  bool flip_sin_to_cos = false;
  int64_t freq_shift = 1;
  DownsamplePadding downsample_padding = DownsamplePadding::symmetric;
  int64_t num_classes = 0;     // > 0: class-conditional, label `num_classes` means "no label"
  // The label embedding has a row for "no label" (trained by label dropout, used by guidance);
  // false for class-conditional models trained without one (diffusers' num_class_embeds).
  bool null_class = true;
  int64_t extra_in_channels = 0;  // condition channels concatenated to x_t at the input
  // Text conditioning (cross_attention_dim > 0): a prompt's token ids (text/tokenizer.h) through a
  // transformer encoder of width cross_attention_dim, whose token states the cross-attention
  // blocks at cross_attention_resolutions (and in the middle, with mid_cross_attention) read.
  int64_t cross_attention_dim = 0;  // 0: no text
  int64_t text_vocab_size = 0;      // ids the encoder embeds (the tokenizer's vocabulary)
  int64_t text_max_tokens = 0;      // L, the length of a prompt's row of ids
  int64_t text_layers = 2;          // transformer layers of the encoder
  int64_t text_heads = 4;           // heads of the encoder's self-attention
  std::vector<int64_t> cross_attention_resolutions{};
  bool mid_cross_attention = true;

  int64_t time_embed_dim() const { return channels * 4; }
  // Rows of the label embedding: the classes, and ∅ where the model has one.
  int64_t label_rows() const { return num_classes + (null_class ? 1 : 0); }
  int64_t level_channels(int64_t level) const { return channels * channel_mult.at(level); }
  int64_t levels() const { return static_cast<int64_t>(channel_mult.size()); }
  bool has_attention_at(int64_t resolution) const;
  bool text_conditional() const { return cross_attention_dim > 0; }
  bool has_cross_attention_at(int64_t resolution) const;
  // Heads of an attention block of `width` channels.
  int64_t attention_heads(int64_t width) const { return attention_head_dim > 0 ? width / attention_head_dim : 1; }
  // Spatial size after one downsampling.
  int64_t downsampled(int64_t n) const {
    return downsample_padding == DownsamplePadding::symmetric ? (n + 1) / 2 : n / 2;
  }
};

// Names: "tiny" (tests), "mnist" (28×28 grey, the default job), "ddpm-cifar10" (the DDPM
// paper's CIFAR-10 network, 35.7M parameters). Image size and channels come from the data.
// with_text turns a preset into a text-conditional one: an encoder of 2 layers whose width is the
// base width (at least 32), cross-attention at every level below the full resolution and in the middle.
UNetConfig unet_config_by_name(const std::string& name, int64_t in_channels, int64_t image_size);
std::vector<std::string> unet_config_names();
UNetConfig with_text(UNetConfig config, int64_t vocab_size, int64_t max_tokens);

// Throws std::invalid_argument naming the field, its value and the limit, before anything is
// built from the config (a metadata field of 0 groups or 10^6 blocks must not reach a constructor).
void validate(const UNetConfig& config);

nlohmann::json to_json(const UNetConfig& config);
// Fields written before the general config (mid_attention … null_class) take their
// defaults when absent, so that older checkpoints load; the result is validated.
UNetConfig unet_config_from_json(const nlohmann::json& j);  // throws naming the bad field

}  // namespace diffuse
