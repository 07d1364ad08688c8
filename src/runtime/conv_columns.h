// The columns a k×k convolution tap reaches inside a row, for the hand-written convolution loops
// (blocked_conv_out.cpp, blocked_conv_in.cpp). Private to src/runtime.
#pragma once

#include <algorithm>
#include <cstdint>

namespace diffuse {

// [lo, hi): the output columns w whose tap j reads inside the row, 0 ≤ w + j − pad < width, so
// that the loops over w need no test per tap.
struct Columns {
  int64_t lo, hi;
  Columns(int64_t width, int64_t j, int64_t pad)
      : lo(std::max<int64_t>(0, pad - j)), hi(std::min(width, width + pad - j)) {}
};

}  // namespace diffuse
