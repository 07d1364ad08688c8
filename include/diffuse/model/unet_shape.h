// A named U-Net configuration with its shape changed: for training and timing other widths and
// depths than the named models' (`train`/`bench --channels --channel-mult --res-blocks --attention-res`).
#pragma once

#include <cstdint>
#include <vector>

#include "diffuse/model/unet_config.h"

namespace diffuse {

struct UNetShape {
  int64_t channels = 0;                        // 0: the configuration's
  int64_t num_res_blocks = 0;                  // 0: the configuration's
  std::vector<int64_t> channel_mult;           // empty: the configuration's
  std::vector<int64_t> attention_resolutions;  // empty: the configuration's; {0}: none (beside the middle block)

  bool changes_anything() const {
    return channels > 0 || num_res_blocks > 0 || !channel_mult.empty() || !attention_resolutions.empty();
  }
};

// `config` with the fields that `shape` gives, validated (validate(UNetConfig) names a field that
// cannot be, e.g. a width that the GroupNorm groups do not divide).
UNetConfig reshaped(UNetConfig config, const UNetShape& shape);

}  // namespace diffuse
