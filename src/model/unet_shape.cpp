#include "diffuse/model/unet_shape.h"

namespace diffuse {

UNetConfig reshaped(UNetConfig config, const UNetShape& shape) {
  if (shape.channels > 0) config.channels = shape.channels;
  if (shape.num_res_blocks > 0) config.num_res_blocks = shape.num_res_blocks;
  if (!shape.channel_mult.empty()) config.channel_mult = shape.channel_mult;
  if (!shape.attention_resolutions.empty()) {
    config.attention_resolutions.clear();
    for (int64_t r : shape.attention_resolutions) {
      if (r > 0) config.attention_resolutions.push_back(r);
    }
  }
  validate(config);
  return config;
}

}  // namespace diffuse
