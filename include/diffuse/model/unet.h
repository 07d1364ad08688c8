// The DDPM U-Net ε_θ(x_t, t[, c]), c a class label, a prompt or condition channels.
//   forward reads as stages: time embedding → conv in → down → middle → up → out.
#pragma once

#include <torch/torch.h>

#include <vector>

#include "diffuse/model/text_encoder.h"
#include "diffuse/model/unet_blocks.h"
#include "diffuse/model/unet_config.h"
#include "diffuse/runtime/ops.h"

namespace diffuse {

class UNetImpl : public torch::nn::Module {
 public:
  explicit UNetImpl(const UNetConfig& config);

  // x_t: [B, C, H, W]; t: [B] int64 (0-based); y, the condition rows:
  //   class-conditional: [B] int64 labels in [0, num_classes], where num_classes is "no label";
  //   text-conditional:  [B, L] int64 token ids (text/tokenizer.h), <start> first;
  //   image-conditional (extra input channels): [B, extra_in_channels, H, W], concatenated to x_t
  //     (diffusion/image_condition.h);
  //   undefined: ∅ (the "no label" class, the empty prompt, zero condition channels).
  // The output has x_t's shape, dtype (also under bf16 autocast) and a contiguous NCHW layout.
  torch::Tensor forward(const torch::Tensor& x_t, const torch::Tensor& t, const torch::Tensor& y = {});

  const UNetConfig& config() const { return config_; }
  // ∅ for a batch of n: the "no label" class [n], the empty prompt [n, L], zero condition
  // channels [n, extra_in_channels, S, S]; undefined for a model that takes none.
  torch::Tensor null_condition(int64_t n, torch::Device device) const;
  // Converts the convolution weights (and, in forward, the input) to this memory format.
  void set_memory_format(MemoryFormat format);
  int64_t parameter_count() const;

 private:
  // One step of the down or up path: a residual block (with optional attention) or a resampler.
  struct Stage {
    ResBlock res{nullptr};
    AttentionBlock attn{nullptr};
    CrossAttentionBlock cross{nullptr};
    Downsample down{nullptr};
    Upsample up{nullptr};
  };

  UNetConfig config_;
  MemoryFormat memory_format_ = MemoryFormat::nchw;
  torch::nn::Linear time_fc1{nullptr}, time_fc2{nullptr};
  torch::nn::Embedding label_embedding{nullptr};
  TextEncoder text_encoder{nullptr};
  torch::nn::Linear text_pool{nullptr};  // the mean of the token states → the time embedding
  torch::nn::Conv2d conv_in{nullptr}, conv_out{nullptr};
  std::vector<Stage> down_, up_;
  ResBlock mid_res1{nullptr}, mid_res2{nullptr};
  AttentionBlock mid_attn{nullptr};
  CrossAttentionBlock mid_cross{nullptr};
  torch::nn::GroupNorm norm_out{nullptr};
};
TORCH_MODULE(UNet);

}  // namespace diffuse
