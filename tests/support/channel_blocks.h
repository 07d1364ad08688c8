// The blocked kernels exist for 8- and 16-channel blocks whatever the CPU (runtime/blocked_layout.h):
// tests of them run once per block, with channel_block() returning it (DIFFUSE_CHANNEL_BLOCK).
#pragma once

#include <gtest/gtest.h>

#include "diffuse/util/environment.h"

#include <cstdint>
#include <string>

namespace diffuse::testing {

// check(block) for block 8 and 16, each under its own trace.
template <class Check>
void for_each_channel_block(Check&& check) {
  for (const int64_t block : {8, 16}) {
    const EnvironmentSwitch use("DIFFUSE_CHANNEL_BLOCK", std::to_string(block), /*on=*/true);
    SCOPED_TRACE("channel block " + std::to_string(block));
    check(block);
  }
}

}  // namespace diffuse::testing
