// One pixel's 16 channels (a block of the channel-blocked layout, runtime/blocked_layout.h) as one
// value, for the hand-written CPU loops (group_norm_silu.cpp, blocked_conv_out.cpp, blocked_layout.cpp,
// blocked_upsample.cpp): GCC's generic vectors become one AVX-512 register, two AVX2 registers or
// four SSE ones, whichever the function is compiled for. Loops marked DIFFUSE_LANE_LOOP are
// compiled for AVX-512, AVX2 and baseline x86-64 (util/target_clones.h). Private to src/runtime.
#pragma once

#include "diffuse/runtime/blocked_layout.h"
#include "diffuse/util/target_clones.h"

#include <cstdint>
#include <cstring>

// Helpers that take 64-byte vectors by value (group_norm_silu.cpp's) are always inlined, so no
// call ABI is involved; GCC still notes the ABI change at their definitions, hence -Wno-psabi
// for that file in CMakeLists.txt. store() takes its vector by reference and needs none.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace diffuse::lanes {

constexpr int64_t L = kChannelBlock;  // lanes: the 16 channels of one pixel
static_assert(L == 16, "the lane type below is 16 floats");

typedef float Lanes __attribute__((vector_size(L * sizeof(float))));
typedef int32_t LaneInts __attribute__((vector_size(L * sizeof(int32_t))));

#define DIFFUSE_LANE_LOOP DIFFUSE_TARGET_CLONES
// Inlined into each clone (GCC does not inline a baseline function into a clone otherwise).
#define DIFFUSE_LANE_HELPER __attribute__((always_inline)) inline

DIFFUSE_LANE_HELPER Lanes load(const float* p) {
  Lanes v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
// Lane by lane: GCC makes this one store per native vector, where a memcpy of the 64-byte value
// goes through the stack on CPUs with narrower vectors (AVX2).
DIFFUSE_LANE_HELPER void store(float* p, const Lanes& v) {
  for (int64_t l = 0; l < L; ++l) p[l] = v[l];
}
DIFFUSE_LANE_HELPER Lanes splat(float v) { return Lanes{} + v; }

}  // namespace diffuse::lanes
