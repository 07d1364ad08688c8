// Floating-point operations of one forward pass of the U-Net for one image, counted as
// 2 × multiply-adds of its convolutions, linear layers and attention products (norms,
// activations and additions are left out, as FLOP counters usually do). A training step costs
// about 3× this (backward ≈ 2× forward).
#pragma once

#include "diffuse/model/unet_config.h"

namespace diffuse {

double unet_forward_flops(const UNetConfig& config);

}  // namespace diffuse
