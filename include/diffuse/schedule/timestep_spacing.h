// Which of the T training timesteps a sampler with S ≪ T steps visits.
// 0-based indices (i = t − 1), largest first, exactly as diffusers' DDIMScheduler with
// steps_offset = 0 gives them, so `diffuse schedule --sampler ddim` can be compared with it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace diffuse {

enum class TimestepSpacing { leading, trailing, linspace, quadratic };

std::string to_string(TimestepSpacing spacing);
std::vector<std::string> timestep_spacing_names();                      // every spacing's name, in the enum's order
TimestepSpacing timestep_spacing_from_string(const std::string& name);  // throws on unknown names

//   leading:  k = T div S;      i_j = j·k                       (j = 0..S−1)
//   trailing: r = T / S;        i_j = round(T − j·r) − 1        (j = 0..S−1)
//   linspace:                   i_j = round(j·(T − 1)/(S − 1))
//   quadratic: c = √(0.8·T)/(S − 1);  i_j = ⌊(j·c)²⌋, raised to i_{j−1} + 1 where it would repeat
//              (the DDIM paper's selection for CIFAR-10: dense near the data, none above 0.8·T;
//              not one of diffusers' spacings)
// `round` is numpy's: halves go to the even neighbour. Returned in descending order.
std::vector<int64_t> spaced_timesteps(int64_t num_train_timesteps, int64_t steps, TimestepSpacing spacing);

}  // namespace diffuse
