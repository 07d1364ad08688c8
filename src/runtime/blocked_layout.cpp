#include "diffuse/runtime/blocked_layout.h"

#include "diffuse/runtime/gradient_wanted.h"
#include "lanes.h"

#include <ATen/Parallel.h>
#include <ATen/record_function.h>

namespace diffuse {

namespace {

// The reference definition, for dtypes the loops below do not take: a permuted copy through
// LibTorch, several times slower than a plain clone of the same tensor on the U-Net's shapes
// (the loops below exist for that).
torch::Tensor to_blocked_by_permute(const torch::Tensor& x) {
  const auto n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  return x.reshape({n, c / kChannelBlock, kChannelBlock, h, w}).permute({0, 1, 3, 4, 2}).contiguous();
}

torch::Tensor from_blocked_by_permute(const torch::Tensor& x5) {
  const auto n = x5.size(0), cb = x5.size(1), h = x5.size(2), w = x5.size(3);
  return x5.permute({0, 1, 4, 2, 3}).reshape({n, cb * kChannelBlock, h, w}).contiguous();
}

// Each (image, channel block) is a 16 × HW matrix in NCHW and its transpose, HW × 16, in the
// blocked layout: one transpose per block, the blocks shared out among the threads.
//   to:   blocked[p·16 + l] = planes[l·HW + p]        from: planes[l·HW + p] = blocked[p·16 + l]
// 16 pixels at a time as a 16 × 16 tile of vectors (lanes.h), transposed in registers; the last
// HW mod 16 pixels one by one.

// One stage of the in-register transpose: exchanges bit S of the row index with bit S of the
// column index, for the rows r (bit S clear) and r | S:
//   r'[c]     = c & S ? (r | S)[c & ~S] : r[c]
//   (r|S)'[c] = c & S ? (r | S)[c]      : r[c | S]
// After the stages S = 1, 2, 4, 8 every element (i, j) has moved to (j, i).
template <int S>
DIFFUSE_LANE_HELPER void exchange_index_bit(lanes::Lanes& low, lanes::Lanes& high) {
#define DIFFUSE_LOW(c) (((c) & S) ? 16 + ((c) & ~S) : (c))
#define DIFFUSE_HIGH(c) (((c) & S) ? 16 + (c) : ((c) | S))
#define DIFFUSE_SIXTEEN(F) F(0), F(1), F(2), F(3), F(4), F(5), F(6), F(7), F(8), F(9), F(10), F(11), F(12), F(13), F(14), F(15)
#if defined(__clang__)  // clang's shuffle of two vectors takes the indices as constant arguments
  const lanes::Lanes new_low = __builtin_shufflevector(low, high, DIFFUSE_SIXTEEN(DIFFUSE_LOW));
  high = __builtin_shufflevector(low, high, DIFFUSE_SIXTEEN(DIFFUSE_HIGH));
#else  // GCC's takes them as a vector (GCC 12 and later also know clang's form)
  constexpr lanes::LaneInts take_low = {DIFFUSE_SIXTEEN(DIFFUSE_LOW)};
  constexpr lanes::LaneInts take_high = {DIFFUSE_SIXTEEN(DIFFUSE_HIGH)};
  const lanes::Lanes new_low = __builtin_shuffle(low, high, take_low);
  high = __builtin_shuffle(low, high, take_high);
#endif
#undef DIFFUSE_SIXTEEN
#undef DIFFUSE_LOW
#undef DIFFUSE_HIGH
  low = new_low;
}

template <int S>
DIFFUSE_LANE_HELPER void exchange_stage(lanes::Lanes (&rows)[16]) {
  for (int r = 0; r < 16; ++r) {
    if (!(r & S)) exchange_index_bit<S>(rows[r], rows[r | S]);
  }
}

DIFFUSE_LANE_HELPER void transpose16(lanes::Lanes (&rows)[16]) {
  exchange_stage<1>(rows);
  exchange_stage<2>(rows);
  exchange_stage<4>(rows);
  exchange_stage<8>(rows);
}

// rows r at src + r·src_stride → transposed, row i at dst + i·dst_stride (floats)
DIFFUSE_LANE_HELPER void transpose_tile(const float* src, int64_t src_stride, float* dst, int64_t dst_stride) {
  lanes::Lanes rows[16];
  for (int r = 0; r < 16; ++r) rows[r] = lanes::load(src + r * src_stride);
  transpose16(rows);
  for (int r = 0; r < 16; ++r) lanes::store(dst + r * dst_stride, rows[r]);
}

DIFFUSE_LANE_LOOP void planes_to_block(const float* planes, float* block, int64_t pixels) {
  constexpr int64_t L = lanes::L;
  int64_t p = 0;
  for (; p + L <= pixels; p += L) transpose_tile(planes + p, pixels, block + p * L, L);
  for (; p < pixels; ++p) {
    for (int64_t l = 0; l < L; ++l) block[p * L + l] = planes[l * pixels + p];
  }
}

DIFFUSE_LANE_LOOP void block_to_planes(const float* block, float* planes, int64_t pixels) {
  constexpr int64_t L = lanes::L;
  int64_t p = 0;
  for (; p + L <= pixels; p += L) transpose_tile(block + p * L, L, planes + p, pixels);
  for (; p < pixels; ++p) {
    for (int64_t l = 0; l < L; ++l) planes[l * pixels + p] = block[p * L + l];
  }
}

template <bool kToBlocked>
void transpose_blocks(const float* in, float* out, int64_t blocks, int64_t pixels) {
  const int64_t size = kChannelBlock * pixels;
  at::parallel_for(0, blocks, std::max<int64_t>(1, (1 << 14) / size), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      if constexpr (kToBlocked) {
        planes_to_block(in + b * size, out + b * size, pixels);
      } else {
        block_to_planes(in + b * size, out + b * size, pixels);
      }
    }
  });
}

template <bool kToBlocked>
torch::Tensor reorder(const torch::Tensor& input) {
  if (input.scalar_type() != torch::kFloat32 || !input.device().is_cpu()) {
    return kToBlocked ? to_blocked_by_permute(input) : from_blocked_by_permute(input);
  }
  RECORD_FUNCTION(kToBlocked ? "diffuse::to_blocked" : "diffuse::from_blocked", std::vector<c10::IValue>({input}));
  const auto x = input.contiguous();
  const int64_t n = x.size(0), h = x.size(2), w = x.size(3);
  const int64_t blocks = n * (kToBlocked ? x.size(1) / kChannelBlock : x.size(1));
  auto out = kToBlocked ? torch::empty({n, x.size(1) / kChannelBlock, h, w, kChannelBlock}, x.options())
                        : torch::empty({n, x.size(1) * kChannelBlock, h, w}, x.options());
  transpose_blocks<kToBlocked>(x.data_ptr<float>(), out.data_ptr<float>(), blocks, h * w);
  return out;
}

// The two re-orders are each other's inverse and each other's backward pass.
template <bool kToBlocked>
struct Reorder : public torch::autograd::Function<Reorder<kToBlocked>> {
  static torch::Tensor forward(torch::autograd::AutogradContext*, const torch::Tensor& x) {
    return reorder<kToBlocked>(x);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*,
                                                 torch::autograd::variable_list grads) {
    return {reorder<!kToBlocked>(grads[0])};
  }
};

template <bool kToBlocked>
torch::Tensor reorder_differentiable(const torch::Tensor& x) {
  if (!gradient_wanted({x})) return reorder<kToBlocked>(x);
  return Reorder<kToBlocked>::apply(x);
}

}  // namespace

torch::Tensor to_blocked(const torch::Tensor& x) {
  TORCH_CHECK(x.dim() == 4 && x.size(1) % kChannelBlock == 0, "to_blocked: expected [N, C, H, W] with C a multiple of ",
              kChannelBlock, ", got ", x.sizes());
  return reorder_differentiable<true>(x);
}

torch::Tensor from_blocked(const torch::Tensor& x5) {
  TORCH_CHECK(x5.dim() == 5 && x5.size(4) == kChannelBlock, "from_blocked: expected [N, C/16, H, W, 16], got ",
              x5.sizes());
  return reorder_differentiable<false>(x5);
}

}  // namespace diffuse
