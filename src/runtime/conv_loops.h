// What the hand-written convolution loops (blocked_conv_out.cpp, blocked_conv_in.cpp) share: the
// columns a tap reaches inside a row, and the images' split into fixed chunks for the weights'
// gradient. Private to src/runtime.
#pragma once

#include <ATen/Parallel.h>

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

// The chunks the images 0..n−1 are summed in for ∂L/∂W: at most 16, fixed by n alone.
inline int64_t image_chunks(int64_t images) { return std::min<int64_t>(images, 16); }

// per_image(chunk, image) for every image, the chunks in parallel and each chunk's images in
// order: partial sums kept per chunk and added in chunk order afterwards give the same result on
// any number of threads.
template <class PerImage>
void for_images_in_chunks(int64_t images, PerImage&& per_image) {
  const int64_t chunks = image_chunks(images);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      for (int64_t n = chunk * images / chunks; n < (chunk + 1) * images / chunks; ++n) per_image(chunk, n);
    }
  });
}

}  // namespace diffuse
