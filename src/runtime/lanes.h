// One pixel's L channels (a block of the channel-blocked layout, runtime/blocked_layout.h) as one
// value, for the hand-written CPU loops (group_norm_silu.cpp, blocked_conv_in.cpp,
// blocked_conv_out.cpp, blocked_layout.cpp, blocked_upsample.cpp, winograd_conv.cpp): GCC's
// generic vectors, L = 16 floats (one AVX-512 register) or L = 8 (one AVX2 register), whichever
// block the activations have. Loops marked DIFFUSE_LANE_LOOP are compiled for AVX-512, AVX2 and
// baseline x86-64 (util/target_clones.h); each kernel file instantiates its loops for both blocks.
// Private to src/runtime.
#pragma once

#include "diffuse/runtime/blocked_layout.h"
#include "diffuse/util/target_clones.h"

#include <cstdint>
#include <cstring>

// Helpers that take 32- or 64-byte vectors by value (group_norm_silu.cpp's) are always inlined, so
// no call ABI is involved; GCC still notes the ABI change at their definitions, hence -Wno-psabi
// for that file in CMakeLists.txt. store() takes its vector by reference and needs none.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace diffuse::lanes {

// The vector types of L lanes: floats, and the integers of the same width that their bits are
// shifted and masked as. (Members of a class template: GCC drops the vector attribute from an
// alias template.)
template <int64_t L>
struct Of {
  static_assert(L == 8 || L == 16, "the channel blocks are 8 or 16 channels");
  typedef float Floats __attribute__((vector_size(L * sizeof(float))));
  typedef int32_t Ints __attribute__((vector_size(L * sizeof(int32_t))));
  typedef uint32_t UInts __attribute__((vector_size(L * sizeof(uint32_t))));
  typedef uint16_t Halves __attribute__((vector_size(L * sizeof(uint16_t))));
};

#define DIFFUSE_LANE_LOOP DIFFUSE_TARGET_CLONES
// Inlined into each clone (GCC does not inline a baseline function into a clone otherwise).
#define DIFFUSE_LANE_HELPER __attribute__((always_inline)) inline

// The lanes of vector type V (Of<L>::Floats).
template <class V>
constexpr int64_t count = sizeof(V) / sizeof(float);

template <class V>
DIFFUSE_LANE_HELPER V load(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
// Lane by lane: GCC makes this one store per native vector, where a memcpy of a 64-byte value
// goes through the stack on CPUs with narrower vectors.
template <class V>
DIFFUSE_LANE_HELPER void store(float* p, const V& v) {
  for (int64_t l = 0; l < count<V>; ++l) p[l] = v[l];
}
template <class V>
DIFFUSE_LANE_HELPER V splat(float v) {
  return V{} + v;
}

}  // namespace diffuse::lanes
