#include "diffuse/runtime/blocked_upsample.h"

#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include "diffuse/runtime/blocked_layout.h"
#include "diffuse/runtime/gradient_wanted.h"
#include "lanes.h"

namespace diffuse {

namespace {

// The rows of blocks of L channels.
template <int64_t L>
struct Rows {
  using Lanes = typename lanes::Of<L>::Floats;

  // Row h of one image's block (W pixels) into rows 2h and 2h + 1 of the output (2W pixels each).
  static DIFFUSE_LANE_LOOP void upsample_row(const float* in, float* out_top, float* out_bottom, int64_t width) {
    for (int64_t w = 0; w < width; ++w) {
      const Lanes v = lanes::load<Lanes>(in + w * L);
      lanes::store(out_top + 2 * w * L, v);
      lanes::store(out_top + (2 * w + 1) * L, v);
      lanes::store(out_bottom + 2 * w * L, v);
      lanes::store(out_bottom + (2 * w + 1) * L, v);
    }
  }

  // The four gradients of each input pixel of row h, from rows 2h and 2h + 1.
  static DIFFUSE_LANE_LOOP void upsample_row_backward(const float* g_top, const float* g_bottom, float* g_in,
                                                      int64_t width) {
    for (int64_t w = 0; w < width; ++w) {
      const Lanes sum = lanes::load<Lanes>(g_top + 2 * w * L) + lanes::load<Lanes>(g_top + (2 * w + 1) * L) +
                        lanes::load<Lanes>(g_bottom + 2 * w * L) + lanes::load<Lanes>(g_bottom + (2 * w + 1) * L);
      lanes::store(g_in + w * L, sum);
    }
  }
};

// rows: N · C/B · H input rows of `width` pixels of B channels; one call per row, shared out among
// the threads.
template <class Row>
void for_each_row(int64_t rows, int64_t width, int64_t block, Row&& row) {
  at::parallel_for(0, rows, std::max<int64_t>(1, (1 << 13) / (width * block)), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) row(r);
  });
}

torch::Tensor upsample(const torch::Tensor& x5) {
  RECORD_FUNCTION("diffuse::upsample_twice_blocked", std::vector<c10::IValue>({x5}));
  const auto x = x5.contiguous();
  const int64_t n = x.size(0), cb = x.size(1), h = x.size(2), w = x.size(3), L = x.size(4);
  torch::Tensor y = torch::empty({n, cb, 2 * h, 2 * w, L}, x.options());
  const float* in = x.data_ptr<float>();
  float* out = y.data_ptr<float>();
  const auto row = L == 16 ? Rows<16>::upsample_row : Rows<8>::upsample_row;
  for_each_row(n * cb * h, w, L, [&](int64_t r) {  // r = (image · C/B + block) · H + h; output rows 2r, 2r + 1
    row(in + r * w * L, out + 2 * r * (2 * w * L), out + (2 * r + 1) * (2 * w * L), w);
  });
  return y;
}

torch::Tensor upsample_backward(const torch::Tensor& grad_y) {
  RECORD_FUNCTION("diffuse::upsample_twice_blocked_backward", std::vector<c10::IValue>({grad_y}));
  const auto g = grad_y.contiguous();
  const int64_t n = g.size(0), cb = g.size(1), h = g.size(2) / 2, w = g.size(3) / 2, L = g.size(4);
  torch::Tensor grad_x = torch::empty({n, cb, h, w, L}, g.options());
  const float* gy = g.data_ptr<float>();
  float* gx = grad_x.data_ptr<float>();
  const auto row_backward = L == 16 ? Rows<16>::upsample_row_backward : Rows<8>::upsample_row_backward;
  for_each_row(n * cb * h, w, L, [&](int64_t r) {
    row_backward(gy + 2 * r * (2 * w * L), gy + (2 * r + 1) * (2 * w * L), gx + r * w * L, w);
  });
  return grad_x;
}

struct UpsampleTwice : public torch::autograd::Function<UpsampleTwice> {
  static torch::Tensor forward(torch::autograd::AutogradContext*, const torch::Tensor& x5) { return upsample(x5); }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*,
                                                 torch::autograd::variable_list grads) {
    return {upsample_backward(grads[0])};
  }
};

}  // namespace

torch::Tensor upsample_twice_blocked(const torch::Tensor& x5) {
  check_blocked_float32("upsample_twice_blocked", "x", x5);
  if (!gradient_wanted({x5})) return upsample(x5);
  return UpsampleTwice::apply(x5);
}

}  // namespace diffuse
