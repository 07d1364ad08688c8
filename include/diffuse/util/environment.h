// Reading switches from the environment (DIFFUSE_BLOCKED_ACTIVATIONS=0, DIFFUSE_CUDA_GROUP_NORM=0,
// the bench's DIFFUSE_BF16_WEIGHTS=1, ...): set to a value, or not.
#pragma once

#include <string>

namespace diffuse {

// Whether the variable `name` is set to exactly `value`.
bool env_equals(const char* name, const std::string& value);

}  // namespace diffuse
