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
torch::Tensor to_blocked_by_permute(const torch::Tensor& x, int64_t block) {
  const auto n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  return x.reshape({n, c / block, block, h, w}).permute({0, 1, 3, 4, 2}).contiguous();
}

torch::Tensor from_blocked_by_permute(const torch::Tensor& x5) {
  const auto n = x5.size(0), cb = x5.size(1), h = x5.size(2), w = x5.size(3);
  return x5.permute({0, 1, 4, 2, 3}).reshape({n, cb * x5.size(4), h, w}).contiguous();
}

// Each (image, channel block) is an L × HW matrix in NCHW and its transpose, HW × L, in the
// blocked layout: one transpose per block, the blocks shared out among the threads.
//   to:   blocked[p·L + l] = planes[l·HW + p]        from: planes[l·HW + p] = blocked[p·L + l]
// L pixels at a time as an L × L tile of vectors (lanes.h), transposed in registers; the last
// HW mod L pixels one by one.
template <int64_t L>
struct Transposes {
  using Lanes = typename lanes::Of<L>::Floats;
  using LaneInts = typename lanes::Of<L>::Ints;

  // One stage of the in-register transpose: exchanges bit S of the row index with bit S of the
  // column index, for the rows r (bit S clear) and r | S:
  //   r'[c]     = c & S ? (r | S)[c & ~S] : r[c]
  //   (r|S)'[c] = c & S ? (r | S)[c]      : r[c | S]
  // After the stages S = 1, 2, 4 (and 8) every element (i, j) has moved to (j, i).
  template <int S>
  static DIFFUSE_LANE_HELPER void exchange_index_bit(Lanes& low, Lanes& high) {
#define DIFFUSE_LOW(c) (((c)&S) ? L + ((c) & ~S) : (c))
#define DIFFUSE_HIGH(c) (((c)&S) ? L + (c) : ((c) | S))
#define DIFFUSE_EIGHT(F) F(0), F(1), F(2), F(3), F(4), F(5), F(6), F(7)
#define DIFFUSE_SIXTEEN(F) DIFFUSE_EIGHT(F), F(8), F(9), F(10), F(11), F(12), F(13), F(14), F(15)
#if defined(__clang__)  // clang's shuffle of two vectors takes the indices as constant arguments
#define DIFFUSE_SHUFFLE(LANES)                                                  \
  const Lanes new_low = __builtin_shufflevector(low, high, LANES(DIFFUSE_LOW)); \
  high = __builtin_shufflevector(low, high, LANES(DIFFUSE_HIGH));
#else  // GCC's takes them as a vector (GCC 12 and later also know clang's form)
#define DIFFUSE_SHUFFLE(LANES)                                  \
  constexpr LaneInts take_low = {LANES(DIFFUSE_LOW)};           \
  constexpr LaneInts take_high = {LANES(DIFFUSE_HIGH)};         \
  const Lanes new_low = __builtin_shuffle(low, high, take_low); \
  high = __builtin_shuffle(low, high, take_high);
#endif
    if constexpr (L == 16) {
      DIFFUSE_SHUFFLE(DIFFUSE_SIXTEEN)
      low = new_low;
    } else {
      DIFFUSE_SHUFFLE(DIFFUSE_EIGHT)
      low = new_low;
    }
#undef DIFFUSE_SHUFFLE
#undef DIFFUSE_SIXTEEN
#undef DIFFUSE_EIGHT
#undef DIFFUSE_LOW
#undef DIFFUSE_HIGH
  }

  template <int S>
  static DIFFUSE_LANE_HELPER void exchange_stage(Lanes (&rows)[L]) {
    for (int r = 0; r < L; ++r) {
      if (!(r & S)) exchange_index_bit<S>(rows[r], rows[r | S]);
    }
  }

  // rows r at src + r·src_stride → transposed, row i at dst + i·dst_stride (floats)
  static DIFFUSE_LANE_HELPER void transpose_tile(const float* src, int64_t src_stride, float* dst, int64_t dst_stride) {
    Lanes rows[L];
    for (int r = 0; r < L; ++r) rows[r] = lanes::load<Lanes>(src + r * src_stride);
    exchange_stage<1>(rows);
    exchange_stage<2>(rows);
    exchange_stage<4>(rows);
    if constexpr (L == 16) exchange_stage<8>(rows);
    for (int r = 0; r < L; ++r) lanes::store(dst + r * dst_stride, rows[r]);
  }

  static DIFFUSE_LANE_LOOP void planes_to_block(const float* planes, float* block, int64_t pixels) {
    int64_t p = 0;
    for (; p + L <= pixels; p += L) transpose_tile(planes + p, pixels, block + p * L, L);
    for (; p < pixels; ++p) {
      for (int64_t l = 0; l < L; ++l) block[p * L + l] = planes[l * pixels + p];
    }
  }

  static DIFFUSE_LANE_LOOP void block_to_planes(const float* block, float* planes, int64_t pixels) {
    int64_t p = 0;
    for (; p + L <= pixels; p += L) transpose_tile(block + p * L, L, planes + p, pixels);
    for (; p < pixels; ++p) {
      for (int64_t l = 0; l < L; ++l) planes[l * pixels + p] = block[p * L + l];
    }
  }

  template <bool kToBlocked>
  static void transpose_blocks(const float* in, float* out, int64_t blocks, int64_t pixels) {
    const int64_t size = L * pixels;
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
};

// x → blocked by `block` (kToBlocked), or blocked x → NCHW (block: x's)
template <bool kToBlocked>
torch::Tensor reorder(const torch::Tensor& input, int64_t block) {
  if (input.scalar_type() != torch::kFloat32 || !input.device().is_cpu()) {
    return kToBlocked ? to_blocked_by_permute(input, block) : from_blocked_by_permute(input);
  }
  RECORD_FUNCTION(kToBlocked ? "diffuse::to_blocked" : "diffuse::from_blocked", std::vector<c10::IValue>({input}));
  const auto x = input.contiguous();
  const int64_t n = x.size(0), h = x.size(2), w = x.size(3);
  const int64_t blocks = n * (kToBlocked ? x.size(1) / block : x.size(1));
  auto out = kToBlocked ? torch::empty({n, x.size(1) / block, h, w, block}, x.options())
                        : torch::empty({n, x.size(1) * block, h, w}, x.options());
  const float* in_p = x.data_ptr<float>();
  float* out_p = out.data_ptr<float>();
  if (block == 16) {
    Transposes<16>::transpose_blocks<kToBlocked>(in_p, out_p, blocks, h * w);
  } else {
    Transposes<8>::transpose_blocks<kToBlocked>(in_p, out_p, blocks, h * w);
  }
  return out;
}

// The two re-orders are each other's inverse and each other's backward pass.
template <bool kToBlocked>
struct Reorder : public torch::autograd::Function<Reorder<kToBlocked>> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, int64_t block) {
    ctx->saved_data["block"] = block;
    return reorder<kToBlocked>(x, block);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    return {reorder<!kToBlocked>(grads[0], ctx->saved_data["block"].toInt()), torch::Tensor()};
  }
};

// block: the block of the blocked side (the result's, or x's)
template <bool kToBlocked>
torch::Tensor reorder_differentiable(const torch::Tensor& x, int64_t block) {
  if (!gradient_wanted({x})) return reorder<kToBlocked>(x, block);
  return Reorder<kToBlocked>::apply(x, block);
}

}  // namespace

torch::Tensor to_blocked(const torch::Tensor& x, int64_t block) {
  if (block == 0) block = channel_block();
  TORCH_CHECK(block == 8 || block == 16, "to_blocked: the block must be 8 or 16 channels, got ", block);
  TORCH_CHECK(x.dim() == 4 && x.size(1) % block == 0, "to_blocked: expected [N, C, H, W] with C a multiple of ", block,
              ", got ", x.sizes());
  return reorder_differentiable<true>(x, block);
}

void check_blocked_float32(const char* who, const char* name, const torch::Tensor& t) {
  TORCH_CHECK(
      t.dim() == 5 && (t.size(4) == 8 || t.size(4) == 16) && t.device().is_cpu() && t.scalar_type() == torch::kFloat32,
      who, ": ", name, " must be a float32 CPU tensor [N, C/B, H, W, B] with B 8 or 16, got ", t.sizes());
}

torch::Tensor from_blocked(const torch::Tensor& x5) {
  TORCH_CHECK(x5.dim() == 5 && (x5.size(4) == 8 || x5.size(4) == 16),
              "from_blocked: expected [N, C/B, H, W, B] with B 8 or 16, got ", x5.sizes());
  return reorder_differentiable<false>(x5, x5.size(4));
}

}  // namespace diffuse
