#include "diffuse/runtime/group_norm_silu.h"

#include "diffuse/runtime/blocked_layout.h"
#include "diffuse/runtime/gradient_wanted.h"
#include "lanes.h"

#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace diffuse {

namespace {

using lanes::load;
using lanes::splat;
using lanes::store;
using BF16 = c10::BFloat16;

// Dropout without a stored mask: element i is kept where the top 31 bits of a hash of (i, seed)
// are at least p·2³¹, so that backward recomputes the same mask from the seed. The hash is murmur3's 32-bit
// finaliser applied twice, the seed's halves mixed in before each (so that two seeds give
// unrelated masks, not shifted copies of one). `scale` = 1/(1 − p); inactive: p = 0.
struct Dropout {
  uint32_t seed_lo = 0, seed_hi = 0, threshold = 0;  // threshold: p·2³¹
  float scale = 1.0f;
  bool active = false;
};

// x = cat(a, b) along channels, all three blocked float32 [N, C/B, H, W, B]: unit k of x (image
// i = k / blocks, block cb = k % blocks) is a's block cb for cb < a_blocks, else b's block
// cb − a_blocks. P: const float* (reading a and b) or float* (writing their gradients).
template <class P>
struct CatParts {
  P a, b;
  int64_t a_blocks, b_blocks, unit;  // unit: elements of one block of one image (pixels · B)
  P operator()(int64_t k) const {
    const int64_t blocks = a_blocks + b_blocks, i = k / blocks, cb = k % blocks;
    return cb < a_blocks ? a + (i * a_blocks + cb) * unit : b + (i * b_blocks + cb - a_blocks) * unit;
  }
};

// The kernels on vectors of L lanes: a block of L channels of one pixel (float32 blocked, bf16 NHWC), or L pixels of
// one channel (bf16 NCHW).
template <int64_t L>
struct Kernels {
  using Lanes = typename lanes::Of<L>::Floats;
  using LaneInts = typename lanes::Of<L>::Ints;
  using LaneUInts = typename lanes::Of<L>::UInts;
  using LaneHalves = typename lanes::Of<L>::Halves;

  // max(x, lo) and min(x, hi) lane by lane, selected by the sign bit of x − lo (hi − x) rather than by
  // a vector comparison: GCC compares vectors one lane at a time where the CPU's vectors are
  // narrower (16 floats on AVX2), but shifts and masks them two halves at a time. A NaN comes out as a NaN or as
  // the bound; the callers multiply by the NaN argument again, so it still reaches their output.
  static DIFFUSE_LANE_HELPER Lanes select_where_negative(Lanes sign_of, Lanes if_negative, Lanes otherwise) {
    const LaneInts negative = (LaneInts)sign_of >> 31;  // all ones where the sign bit is set
    return (Lanes)((negative & (LaneInts)if_negative) | (~negative & (LaneInts)otherwise));
  }
  static DIFFUSE_LANE_HELPER Lanes at_least(Lanes x, float lo) {
    return select_where_negative(x - lo, splat<Lanes>(lo), x);
  }
  static DIFFUSE_LANE_HELPER Lanes at_most(Lanes x, float hi) {
    return select_where_negative(hi - x, splat<Lanes>(hi), x);
  }

  // e^x in float32 without a library call: x = n·ln2 + r with n = round(x/ln2) and |r| ≤ ln2/2
  // (ln2 split in two constants so that n·ln2 is exact, Cody–Waite), e^r by a degree-7 polynomial
  // (Cephes' expf coefficients: relative error < 2e-7 on that interval), and 2^n by writing
  // n + 127 into the exponent bits. x must lie in [−87, 88], where 2^n stays a normal float (the
  // caller clamps it).
  static DIFFUSE_LANE_HELPER Lanes exp_in_range(Lanes x) {
    const Lanes n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest (1.5·2²³ trick)
    const Lanes r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
    Lanes p = splat<Lanes>(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const LaneInts bits = (__builtin_convertvector(n, LaneInts) + 127) << 23;
    return p * (Lanes)bits;  // a vector cast keeps the bits
  }

  // 1/d for d ≥ 1 without a division (a vector division costs as much as the rest of the loop):
  // a first guess from the bits (subtracting them from a constant roughly negates the exponent,
  // relative error < 12 %), then three Newton steps r ← r(2 − d·r), each squaring the error:
  // 0.12 → 0.014 → 2e-4 → 4e-8.
  static DIFFUSE_LANE_HELPER Lanes reciprocal(Lanes d) {
    Lanes r = (Lanes)(0x7EF311C7 - (LaneInts)d);
    r = r * (2.0f - d * r);
    r = r * (2.0f - d * r);
    return r * (2.0f - d * r);
  }

  // σ(z) = 1/(1 + e^(−z)), −z clamped to [−87, 87]: e^(−z) ≤ e^87 keeps 1/(1 + e^(−z)) a normal float.
  static DIFFUSE_LANE_HELPER Lanes sigmoid(Lanes z) {
    return reciprocal(1.0f + exp_in_range(at_most(at_least(-z, -87.0f), 87.0f)));
  }

  // The formulas both layouts' kernels share. C, a coefficient: Lanes (one per lane: the blocked
  // layout's L channels) or float (one for all lanes: L pixels of one NCHW channel).
  // SiLU(z) = z·σ(z)
  static DIFFUSE_LANE_HELPER Lanes silu(Lanes z) { return z * sigmoid(z); }

  // ∂L/∂z = ∂L/∂SiLU · σ(z)(1 + z(1 − σ(z)))
  static DIFFUSE_LANE_HELPER Lanes silu_backward(Lanes z, Lanes upstream) {
    const Lanes sig = sigmoid(z);
    return upstream * sig * (1.0f + z * (1.0f - sig));
  }

  // ∂L/∂x = (1/σ)(γ ∂L/∂z − m1 − x̂·m2), x̂ = (x + s − μ)/σ
  template <class C>
  static DIFFUSE_LANE_HELPER Lanes group_norm_backward(Lanes x, Lanes dz, C gamma, C shift_minus_mean, C inv_std, C m1,
                                                       C m2) {
    const Lanes xhat = (x + shift_minus_mean) * inv_std;
    return inv_std * (gamma * dz - m1 - xhat * m2);
  }

  static DIFFUSE_LANE_HELPER LaneUInts fmix32(LaneUInts h) {
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    return h ^ (h >> 16);
  }

  // 1/(1 − p) where the L elements from index `first` are kept, else 0.
  static DIFFUSE_LANE_HELPER Lanes keep_scale(const Dropout& d, uint32_t first) {
    LaneUInts index{};
    for (int64_t l = 0; l < L; ++l) index[l] = first + static_cast<uint32_t>(l);
    const LaneUInts h = fmix32(fmix32(index + d.seed_lo) ^ d.seed_hi);
    // h/2 − threshold, both below 2³¹, is negative exactly where the element is dropped (its sign,
    // not a comparison: see select_where_negative)
    const LaneInts dropped = (LaneInts)((h >> 1) - d.threshold) >> 31;
    return (Lanes)(~dropped & (LaneInts)splat<Lanes>(d.scale));
  }

  // bf16 → float32: the 16 bits are the float's upper half.
  static DIFFUSE_LANE_HELPER Lanes load_bf16(const c10::BFloat16* p) {
    LaneHalves h;
    std::memcpy(&h, p, sizeof h);
    return (Lanes)(__builtin_convertvector(h, LaneUInts) << 16);
  }

  // float32 → bf16, rounding to nearest even (NaN stays a NaN).
  static DIFFUSE_LANE_HELPER void store_bf16(c10::BFloat16* p, const Lanes& v) {
    const LaneUInts u = (LaneUInts)v;
    const LaneUInts rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    // all ones where the bits without the sign exceed infinity's: a NaN (by sign, see select_where_negative)
    const LaneUInts nan = (LaneUInts)((LaneInts)(0x7F800000u - (u & 0x7FFFFFFFu)) >> 31);
    const LaneHalves h = __builtin_convertvector((rounded & ~nan) | (0x7FC0u & nan), LaneHalves);
    std::memcpy(p, &h, sizeof h);
  }

  // A pixel's L channels as float32 lanes, from float32 or bf16 memory, and back.
  static DIFFUSE_LANE_HELPER Lanes load_lanes(const float* p) { return load<Lanes>(p); }
  static DIFFUSE_LANE_HELPER Lanes load_lanes(const BF16* p) { return load_bf16(p); }
  static DIFFUSE_LANE_HELPER void store_lanes(float* p, const Lanes& v) { store(p, v); }
  static DIFFUSE_LANE_HELPER void store_lanes(BF16* p, const Lanes& v) { store_bf16(p, v); }

  // The loops below walk one unit: L channels (a channel block) of one image over its `pixels`
  // pixels, whose L values lie side by side, the next pixel's `stride` elements further on (L
  // in the blocked layout, C in NHWC). T: float32 (blocked) or bf16 (NHWC) in memory; the
  // arithmetic is float32 either way.

  // Σ x and Σ x² per lane over one unit: float sums over runs of 64 pixels, added up in double.
  template <class T>
  static DIFFUSE_LANE_LOOP void block_sums(const T* x, int64_t pixels, int64_t stride, double* sum, double* sum_sq) {
    double s[L] = {}, q[L] = {};
    for (int64_t p0 = 0; p0 < pixels; p0 += 64) {
      Lanes run_s{}, run_q{};
      for (int64_t p = p0; p < std::min(pixels, p0 + 64); ++p) {
        const Lanes v = load_lanes(x + p * stride);
        run_s += v;
        run_q += v * v;
      }
      for (int64_t l = 0; l < L; ++l) s[l] += run_s[l], q[l] += run_q[l];
    }
    for (int64_t l = 0; l < L; ++l) sum[l] = s[l], sum_sq[l] = q[l];
  }

  // The loops below come in copies, with and without SiLU, dropout or a second gradient, chosen once
  // per run of pixels: a branch between vector values inside the loop makes GCC pass them through
  // memory where the CPU's vectors are narrower (16 floats on AVX2). Helpers, not lambdas: GCC inlines no lambda
  // into a clone.

  // y = SiLU(x·a + b) (or x·a + b, the norm alone), then dropout
  template <bool kSilu, bool kDropout, class T>
  static DIFFUSE_LANE_HELPER void norm_silu_pixels(const T* x, int64_t pixels, int64_t stride, Lanes a, Lanes b,
                                                   const Dropout& dropout, uint32_t first, T* y) {
    for (int64_t p = 0; p < pixels; ++p) {
      Lanes out = load_lanes(x + p * stride) * a + b;
      if constexpr (kSilu) out = silu(out);
      if constexpr (kDropout) out *= keep_scale(dropout, first + static_cast<uint32_t>(p * stride));
      store_lanes(y + p * stride, out);
    }
  }

  // y = SiLU(x·a + b): a = γ/σ, b = β + (s − μ)·γ/σ per lane (without `with_silu`: y = x·a + b, the norm
  // alone); then dropout (`first`: the index of the unit's first element in the tensor).
  template <class T>
  static DIFFUSE_LANE_LOOP void block_norm_silu(const T* x, int64_t pixels, int64_t stride, const float* a_,
                                                const float* b_, bool with_silu, const Dropout& dropout, uint32_t first,
                                                T* y) {
    const Lanes a = load<Lanes>(a_), b = load<Lanes>(b_);
    if (with_silu && !dropout.active) norm_silu_pixels<true, false>(x, pixels, stride, a, b, dropout, first, y);
    if (with_silu && dropout.active) norm_silu_pixels<true, true>(x, pixels, stride, a, b, dropout, first, y);
    if (!with_silu && !dropout.active) norm_silu_pixels<false, false>(x, pixels, stride, a, b, dropout, first, y);
    if (!with_silu && dropout.active) norm_silu_pixels<false, true>(x, pixels, stride, a, b, dropout, first, y);
  }

  // ∂L/∂z of pixels [begin, end) into dz, their Σ ∂L/∂z added to run_s and Σ ∂L/∂z·x̂ to run_q
  template <bool kSilu, bool kDropout, class T>
  static DIFFUSE_LANE_HELPER void backward_sums_pixels(const T* x, const T* dy, int64_t begin, int64_t end,
                                                       int64_t stride, Lanes a, Lanes b, Lanes shift_minus_mean,
                                                       Lanes inv_std, const Dropout& dropout, uint32_t first, float* dz,
                                                       Lanes& run_s, Lanes& run_q) {
    for (int64_t p = begin; p < end; ++p) {
      const Lanes v = load_lanes(x + p * stride);
      Lanes g = load_lanes(dy + p * stride);  // ∂L/∂SiLU = ∂L/∂y · keep/(1 − p) under dropout
      if constexpr (kDropout) g *= keep_scale(dropout, first + static_cast<uint32_t>(p * stride));
      if constexpr (kSilu) g = silu_backward(v * a + b, g);
      store(dz + p * stride, g);
      run_s += g;
      run_q += g * ((v + shift_minus_mean) * inv_std);
    }
  }

  // Backward, first pass: ∂L/∂z into dz (float32, in the same layout), and per lane Σ ∂L/∂z and
  // Σ ∂L/∂z·x̂, x̂ = (x + s − μ)/σ. Without `with_silu`, ∂L/∂z = ∂L/∂y.
  template <class T>
  static DIFFUSE_LANE_LOOP void block_backward_sums(const T* x, const T* dy, int64_t pixels, int64_t stride,
                                                    const float* a_, const float* b_, const float* shift_minus_mean_,
                                                    const float* inv_std_, bool with_silu, const Dropout& dropout,
                                                    uint32_t first, float* dz, double* sum_dz, double* sum_dz_xhat) {
    const Lanes a = load<Lanes>(a_), b = load<Lanes>(b_), shift_minus_mean = load<Lanes>(shift_minus_mean_),
                inv_std = load<Lanes>(inv_std_);
    double s[L] = {}, q[L] = {};
    for (int64_t p0 = 0; p0 < pixels; p0 += 64) {
      const int64_t p1 = std::min(pixels, p0 + 64);
      Lanes run_s{}, run_q{};
      if (with_silu && !dropout.active) {
        backward_sums_pixels<true, false>(x, dy, p0, p1, stride, a, b, shift_minus_mean, inv_std, dropout, first, dz,
                                          run_s, run_q);
      }
      if (with_silu && dropout.active) {
        backward_sums_pixels<true, true>(x, dy, p0, p1, stride, a, b, shift_minus_mean, inv_std, dropout, first, dz,
                                         run_s, run_q);
      }
      if (!with_silu && !dropout.active) {
        backward_sums_pixels<false, false>(x, dy, p0, p1, stride, a, b, shift_minus_mean, inv_std, dropout, first, dz,
                                           run_s, run_q);
      }
      if (!with_silu && dropout.active) {
        backward_sums_pixels<false, true>(x, dy, p0, p1, stride, a, b, shift_minus_mean, inv_std, dropout, first, dz,
                                          run_s, run_q);
      }
      for (int64_t l = 0; l < L; ++l) s[l] += run_s[l], q[l] += run_q[l];
    }
    for (int64_t l = 0; l < L; ++l) sum_dz[l] = s[l], sum_dz_xhat[l] = q[l];
  }

  // ∂L/∂x of pixels [begin, end) into dx (plus `also`'s where kAlso), their sum added to `run`
  template <bool kAlso, class T>
  static DIFFUSE_LANE_HELPER void backward_dx_pixels(const T* x, int64_t begin, int64_t end, int64_t stride,
                                                     Lanes gamma, Lanes shift_minus_mean, Lanes inv_std, Lanes m1,
                                                     Lanes m2, const T* also, const float* dz, T* dx, Lanes& run) {
    for (int64_t p = begin; p < end; ++p) {
      const Lanes d = group_norm_backward(load_lanes(x + p * stride), load<Lanes>(dz + p * stride), gamma,
                                          shift_minus_mean, inv_std, m1, m2);
      if constexpr (kAlso) {
        store_lanes(dx + p * stride, d + load_lanes(also + p * stride));
      } else {
        store_lanes(dx + p * stride, d);
      }
      run += d;
    }
  }

  // Backward, second pass: ∂L/∂x = (1/σ)(γ ∂L/∂z − m1 − x̂·m2) into dx (which may be dz itself:
  // each element is read before it is written), and Σ ∂L/∂x per lane (the shift's gradient).
  // `also` (or null): a second gradient of x, from a residual connection that read x through the
  // passed-through output, added to what is stored but not to the sums.
  template <class T>
  static DIFFUSE_LANE_LOOP void block_backward_dx(const T* x, int64_t pixels, int64_t stride, const float* gamma_,
                                                  const float* shift_minus_mean_, const float* inv_std_,
                                                  const float* m1_, const float* m2_, const T* also, const float* dz,
                                                  T* dx, double* sum_dx) {
    const Lanes gamma = load<Lanes>(gamma_), shift_minus_mean = load<Lanes>(shift_minus_mean_),
                inv_std = load<Lanes>(inv_std_), m1 = load<Lanes>(m1_), m2 = load<Lanes>(m2_);
    double s[L] = {};
    for (int64_t p0 = 0; p0 < pixels; p0 += 64) {
      const int64_t p1 = std::min(pixels, p0 + 64);
      Lanes run{};
      if (also) {
        backward_dx_pixels<true>(x, p0, p1, stride, gamma, shift_minus_mean, inv_std, m1, m2, also, dz, dx, run);
      } else {
        backward_dx_pixels<false>(x, p0, p1, stride, gamma, shift_minus_mean, inv_std, m1, m2, also, dz, dx, run);
      }
      for (int64_t l = 0; l < L; ++l) s[l] += run[l];
    }
    for (int64_t l = 0; l < L; ++l) sum_dx[l] = s[l];
  }

  struct Shape {
    int64_t n, blocks, pixels, channels, groups, per_group;  // blocks: C/L; per_group: channels per group
    Shape(int64_t images, int64_t c, int64_t image_pixels, int64_t g)
        : n(images), blocks(c / L), pixels(image_pixels), channels(c), groups(g), per_group(c / g) {}
    // x5: blocked [N, C/L, H, W, L]
    static Shape of_blocked(const torch::Tensor& x5, int64_t g) {
      return Shape(x5.size(0), x5.size(1) * L, x5.size(2) * x5.size(3), g);
    }
    // x: [N, C, H, W]
    static Shape of_nchw(const torch::Tensor& x, int64_t g) {
      return Shape(x.size(0), x.size(1), x.size(2) * x.size(3), g);
    }
  };

  // Per lane of block `cb` of sample `i`: s − μ, 1/σ, and a, b of block_norm_silu.
  static void lane_coefficients(const Shape& s, int64_t i, int64_t cb, const float* shift, const float* gamma,
                                const float* beta, const float* mean, const float* inv_std, float* shift_minus_mean,
                                float* r, float* a, float* b) {
    for (int64_t l = 0; l < L; ++l) {
      const int64_t c = cb * L + l, g = c / s.per_group;
      shift_minus_mean[l] = shift[i * s.channels + c] - mean[i * s.groups + g];
      r[l] = inv_std[i * s.groups + g];
      a[l] = gamma[c] * r[l];
      b[l] = beta[c] + shift_minus_mean[l] * a[l];
    }
  }

  // Of sample i, per group, from the per-channel Σx and Σx² over the image (float64):
  //   μ = Σu/M, σ² = Σu²/M − μ², with Σu = Σx + P·s and Σu² = Σx² + 2s·Σx + P·s² per channel,
  // M = channels per group × P pixels. Writes μ and 1/√(σ² + ε) into row i of mean and inv_std
  // ([N, groups]).
  static void sample_statistics(const Shape& s, int64_t i, const float* shift, const double* sum, const double* sum_sq,
                                double eps, float* mean, float* inv_std) {
    const double count = static_cast<double>(s.per_group * s.pixels);
    for (int64_t g = 0; g < s.groups; ++g) {
      double su = 0, sq = 0;
      for (int64_t c = g * s.per_group; c < (g + 1) * s.per_group; ++c) {
        const double t = shift[i * s.channels + c], sx = sum[i * s.channels + c];
        su += sx + s.pixels * t;
        sq += sum_sq[i * s.channels + c] + 2 * t * sx + s.pixels * t * t;
      }
      const double mu = su / count, var = std::max(sq / count - mu * mu, 0.0);
      mean[i * s.groups + g] = static_cast<float>(mu);
      inv_std[i * s.groups + g] = static_cast<float>(1.0 / std::sqrt(var + eps));
    }
  }

  // Of sample i, per group: m1 = (1/M) Σ_group γ ∂L/∂z,  m2 = (1/M) Σ_group γ ∂L/∂z x̂, from the
  // per-channel sums Σ ∂L/∂z (sum_dz) and Σ ∂L/∂z x̂ (sum_dz_xhat), into row i of m1 and m2.
  static void sample_backward_means(const Shape& s, int64_t i, const float* gamma, const double* sum_dz,
                                    const double* sum_dz_xhat, float* m1, float* m2) {
    const double count = static_cast<double>(s.per_group * s.pixels);
    for (int64_t g = 0; g < s.groups; ++g) {
      double u = 0, v = 0;
      for (int64_t c = g * s.per_group; c < (g + 1) * s.per_group; ++c) {
        u += gamma[c] * sum_dz[i * s.channels + c];
        v += gamma[c] * sum_dz_xhat[i * s.channels + c];
      }
      m1[i * s.groups + g] = static_cast<float>(u / count);
      m2[i * s.groups + g] = static_cast<float>(v / count);
    }
  }

  // Both kernels, forward and backward, make two passes over their data with per-sample sums in
  // between: first(k) for every unit k (a channel block, or one channel's plane) of every sample,
  // then per_sample(i), then second(k) for every unit. With at least as many samples as threads,
  // each thread takes whole samples and runs the three back to back, so that the second pass reads
  // the sample from this core's cache (a few hundred KiB per sample in the U-Nets) and not from
  // memory. With fewer samples (sampling one image), three passes over the batch, parallel over
  // units, `grain` units at least per task.
  template <class First, class PerSample, class Second>
  static void two_passes(int64_t samples, int64_t units_per_sample, int64_t grain, First&& first,
                         PerSample&& per_sample, Second&& second) {
    if (samples >= at::get_num_threads()) {
      at::parallel_for(0, samples, 1, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          for (int64_t k = i * units_per_sample; k < (i + 1) * units_per_sample; ++k) first(k);
          per_sample(i);
          for (int64_t k = i * units_per_sample; k < (i + 1) * units_per_sample; ++k) second(k);
        }
      });
      return;
    }
    const int64_t units = samples * units_per_sample;
    at::parallel_for(0, units, grain, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) first(k);
    });
    for (int64_t i = 0; i < samples; ++i) per_sample(i);
    at::parallel_for(0, units, grain, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) second(k);
    });
  }

  // ∂L/∂s[n, c] = Σ_hw ∂L/∂x, ∂L/∂γ_c = Σ_n Σ ∂L/∂z x̂, ∂L/∂β_c = Σ_n Σ ∂L/∂z, as float32, from the
  // float64 sums, in plain loops: as tensor operations (a sum and three casts) these small
  // reductions cost more than the kernel around them (bench --profile).
  static std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> parameter_gradients(const Shape& s,
                                                                                     const double* sum_dz,
                                                                                     const double* sum_dz_xhat,
                                                                                     const double* sum_dx) {
    torch::Tensor d_shift = torch::empty({s.n, s.channels}), d_gamma = torch::empty({s.channels}),
                  d_beta = torch::empty_like(d_gamma);
    float *ds = d_shift.data_ptr<float>(), *dg = d_gamma.data_ptr<float>(), *db = d_beta.data_ptr<float>();
    for (int64_t k = 0; k < s.n * s.channels; ++k) ds[k] = static_cast<float>(sum_dx[k]);
    for (int64_t c = 0; c < s.channels; ++c) {
      double g = 0, b = 0;
      for (int64_t i = 0; i < s.n; ++i) g += sum_dz_xhat[i * s.channels + c], b += sum_dz[i * s.channels + c];
      dg[c] = static_cast<float>(g);
      db[c] = static_cast<float>(b);
    }
    return {d_shift, d_gamma, d_beta};
  }

  // The units of x: float32 blocked [N, C/L, H, W, L] (one block after another, pixels L
  // elements apart), or bf16 channels-last [N, C, H, W] (NHWC: a pixel's C channels side by side).
  struct Units {
    Shape s;
    bool nhwc;
    Units(const torch::Tensor& x, int64_t groups)
        : s(x.dim() == 4 ? Shape::of_nchw(x, groups) : Shape::of_blocked(x, groups)), nhwc(x.dim() == 4) {}
    int64_t stride() const { return nhwc ? s.channels : L; }
    // the element where unit k (image k / blocks, channel block k % blocks) starts
    int64_t offset(int64_t k) const {
      return nhwc ? (k / s.blocks) * s.pixels * s.channels + (k % s.blocks) * L : k * s.pixels * L;
    }
  };

  // Forward: y, and the statistics kept for backward (mean and 1/σ per sample and group).
  // With `parts` (float32 only), x_ is still to be written: each unit is first copied from a or b
  // into it, where the statistics' pass reads it anyway (cat(a, b) without a pass of its own).
  template <class T>
  static std::vector<torch::Tensor> forward_kernel(const torch::Tensor& x_, const torch::Tensor& shift,
                                                   const torch::Tensor& gamma, const torch::Tensor& beta,
                                                   int64_t groups, double eps, bool with_silu, const Dropout& dropout,
                                                   const CatParts<const T*>* parts = nullptr) {
    RECORD_FUNCTION(x_.dim() == 4 ? "diffuse::group_norm_silu_nhwc_bf16" : "diffuse::group_norm_silu_blocked",
                    std::vector<c10::IValue>({x_}));
    const Units u(x_, groups);
    const auto& s = u.s;
    torch::Tensor sums = torch::empty({s.n, s.channels}, torch::kFloat64), sums_sq = torch::empty_like(sums);
    const T* x = x_.data_ptr<T>();
    double *sum = sums.data_ptr<double>(), *sum_sq = sums_sq.data_ptr<double>();
    const float *sh = shift.data_ptr<float>(), *ga = gamma.data_ptr<float>(), *be = beta.data_ptr<float>();
    torch::Tensor mean = torch::empty({s.n, s.groups}, torch::kFloat32), inv_std = torch::empty_like(mean);
    float *mu = mean.data_ptr<float>(), *rs = inv_std.data_ptr<float>();
    torch::Tensor y_ = torch::empty_like(x_);  // in x's layout
    T* y = y_.data_ptr<T>();
    T* x_written = parts ? x_.data_ptr<T>() : nullptr;
    two_passes(
        s.n, s.blocks, 1,
        [&](int64_t k) {
          if (parts) std::memcpy(x_written + u.offset(k), (*parts)(k), parts->unit * sizeof(T));
          block_sums(x + u.offset(k), s.pixels, u.stride(), sum + k * L, sum_sq + k * L);
        },
        [&](int64_t i) { sample_statistics(s, i, sh, sum, sum_sq, eps, mu, rs); },
        [&](int64_t k) {
          float smm[L], r[L], a[L], b[L];
          lane_coefficients(s, k / s.blocks, k % s.blocks, sh, ga, be, mu, rs, smm, r, a, b);
          block_norm_silu(x + u.offset(k), s.pixels, u.stride(), a, b, with_silu, dropout,
                          static_cast<uint32_t>(u.offset(k)), y + u.offset(k));
        });
    return {y_, mean, inv_std};
  }

  // Backward: ∂L/∂x, ∂L/∂s, ∂L/∂γ, ∂L/∂β. With `split` (float32 only), x = cat(a, b) and ∂L/∂x goes
  // straight into ∂L/∂a and ∂L/∂b (each unit's ∂L/∂z waits there between the passes); the first
  // tensor returned is then undefined.
  template <class T>
  static std::vector<torch::Tensor> backward_kernel(const torch::Tensor& x_, const torch::Tensor& shift,
                                                    const torch::Tensor& gamma, const torch::Tensor& beta,
                                                    const torch::Tensor& mean, const torch::Tensor& inv_std,
                                                    const torch::Tensor& dy_, const torch::Tensor& dx_also,
                                                    int64_t groups, bool with_silu, const Dropout& dropout,
                                                    const CatParts<T*>* split = nullptr) {
    RECORD_FUNCTION(
        x_.dim() == 4 ? "diffuse::group_norm_silu_nhwc_bf16_backward" : "diffuse::group_norm_silu_blocked_backward",
        std::vector<c10::IValue>({dy_}));
    const Units u(x_, groups);
    const auto& s = u.s;
    const torch::Tensor dx_ = split ? torch::Tensor() : torch::empty_like(x_);
    // ∂L/∂z between the passes in float32: the float32 kernel keeps it in ∂L/∂x's memory
    const torch::Tensor dz_ =
        std::is_same_v<T, float> ? dx_ : torch::empty_like(x_, x_.options().dtype(torch::kFloat32));
    torch::Tensor sums_dz = torch::empty({s.n, s.channels}, torch::kFloat64), sums_dz_xhat = torch::empty_like(sums_dz),
                  sums_dx = torch::empty_like(sums_dz);
    const T *x = x_.data_ptr<T>(), *dy = dy_.data_ptr<T>();
    const float *sh = shift.data_ptr<float>(), *ga = gamma.data_ptr<float>(), *be = beta.data_ptr<float>(),
                *mu = mean.data_ptr<float>(), *rs = inv_std.data_ptr<float>();
    T* dx = split ? nullptr : dx_.data_ptr<T>();
    float* dz = split ? nullptr : dz_.data_ptr<float>();
    // unit k's ∂L/∂x, and its ∂L/∂z between the passes
    const auto dx_of = [&](int64_t k) -> T* { return split ? (*split)(k) : dx + u.offset(k); };
    const auto dz_of = [&](int64_t k) -> float* {
      if constexpr (std::is_same_v<T, float>) {
        if (split) return (*split)(k);
      }
      return dz + u.offset(k);
    };
    const T* also = dx_also.defined() ? dx_also.data_ptr<T>() : nullptr;
    double *a_sum = sums_dz.data_ptr<double>(), *b_sum = sums_dz_xhat.data_ptr<double>(),
           *dx_sum = sums_dx.data_ptr<double>();
    std::vector<float> m1(s.n * s.groups), m2(s.n * s.groups);
    two_passes(
        s.n, s.blocks, 1,
        [&](int64_t k) {
          float smm[L], r[L], a[L], b[L];
          lane_coefficients(s, k / s.blocks, k % s.blocks, sh, ga, be, mu, rs, smm, r, a, b);
          block_backward_sums(x + u.offset(k), dy + u.offset(k), s.pixels, u.stride(), a, b, smm, r, with_silu, dropout,
                              static_cast<uint32_t>(u.offset(k)), dz_of(k), a_sum + k * L, b_sum + k * L);
        },
        [&](int64_t i) { sample_backward_means(s, i, ga, a_sum, b_sum, m1.data(), m2.data()); },
        [&](int64_t k) {
          const int64_t i = k / s.blocks, cb = k % s.blocks;
          float smm[L], r[L], a[L], b[L], gl[L], m1l[L], m2l[L];
          lane_coefficients(s, i, cb, sh, ga, be, mu, rs, smm, r, a, b);
          for (int64_t l = 0; l < L; ++l) {
            const int64_t c = cb * L + l, g = c / s.per_group;
            gl[l] = ga[c];
            m1l[l] = m1[i * groups + g];
            m2l[l] = m2[i * groups + g];
          }
          block_backward_dx(x + u.offset(k), s.pixels, u.stride(), gl, smm, r, m1l, m2l,
                            also ? also + u.offset(k) : nullptr, dz_of(k), dx_of(k), dx_sum + k * L);
        });
    auto [d_shift, d_gamma, d_beta] = parameter_gradients(s, a_sum, b_sum, dx_sum);
    return {dx_, d_shift, d_gamma, d_beta};
  }

  // ---- bfloat16 NCHW: the CPU's bf16 autocast path ----
  // One channel's image (a plane of P pixels) at a time, L pixels per vector with that channel's
  // coefficients in every lane. x, ∂L/∂y and the results are bf16 in memory, float32 in registers:
  // no float32 copy of x, no separate SiLU, no casts around the norm (under autocast LibTorch casts
  // x to float32 for GroupNorm, runs SiLU in float32 and casts the result to bf16 for the
  // convolution: four more passes over memory, forward and backward alike).

  // The last P mod L pixels of a plane go through these zero-padded copies.
  struct PlaneTail {
    int64_t start, count;
    explicit PlaneTail(int64_t pixels) : start(pixels - pixels % L), count(pixels % L) {}
    template <class T>
    void copy_in(const T* from, T (&to)[L]) const {
      std::memset(to, 0, sizeof to);
      std::memcpy(to, from + start, count * sizeof(T));
    }
    template <class T>
    void copy_out(const T (&from)[L], T* to) const {
      std::memcpy(to + start, from, count * sizeof(T));
    }
  };

  // Σ x and Σ x² over a plane (zero padding adds nothing).
  DIFFUSE_LANE_LOOP
  static void plane_sums_bf16(const c10::BFloat16* x, int64_t pixels, double* sum, double* sum_sq) {
    const PlaneTail tail(pixels);
    Lanes s{}, q{};
    for (int64_t p = 0; p < tail.start; p += L) {
      const Lanes v = load_bf16(x + p);
      s += v;
      q += v * v;
    }
    if (tail.count) {
      c10::BFloat16 pad[L];
      tail.copy_in(x, pad);
      const Lanes v = load_bf16(pad);
      s += v;
      q += v * v;
    }
    double ds = 0, dq = 0;
    for (int64_t l = 0; l < L; ++l) ds += s[l], dq += q[l];
    *sum = ds;
    *sum_sq = dq;
  }

  // y = SiLU(x·a + b) over a plane, a = γ/σ, b = β + (s − μ)·γ/σ.
  DIFFUSE_LANE_LOOP
  static void plane_norm_silu_bf16(const c10::BFloat16* x, int64_t pixels, float a, float b, c10::BFloat16* y) {
    const PlaneTail tail(pixels);
    for (int64_t p = 0; p < tail.start; p += L) store_bf16(y + p, silu(load_bf16(x + p) * a + b));
    if (tail.count) {
      c10::BFloat16 pad[L], out[L];
      tail.copy_in(x, pad);
      store_bf16(out, silu(load_bf16(pad) * a + b));
      tail.copy_out(out, y);
    }
  }

  // ∂L/∂z for z = x·a + b, added to the sums Σ ∂L/∂z (s) and Σ ∂L/∂z·x̂ (q), x̂ = (x + s − μ)/σ.
  // (A helper, not a lambda: GCC does not inline lambdas into a clone, and a call would pass the
  // 64-byte vectors by the baseline ABI.)
  static DIFFUSE_LANE_HELPER Lanes dz_and_sums(Lanes v, Lanes upstream, float a, float b, float shift_minus_mean,
                                               float inv_std, Lanes& s, Lanes& q) {
    const Lanes g = silu_backward(v * a + b, upstream);
    s += g;
    q += g * ((v + shift_minus_mean) * inv_std);
    return g;
  }

  // Backward, first pass over a plane: ∂L/∂z into dz (float32), Σ ∂L/∂z and Σ ∂L/∂z·x̂ with
  // x̂ = (x + s − μ)/σ (padding: ∂L/∂y = 0, so ∂L/∂z = 0 there).
  DIFFUSE_LANE_LOOP
  static void plane_backward_sums_bf16(const c10::BFloat16* x, const c10::BFloat16* dy, int64_t pixels, float a,
                                       float b, float shift_minus_mean, float inv_std, float* dz, double* sum_dz,
                                       double* sum_dz_xhat) {
    const PlaneTail tail(pixels);
    Lanes s{}, q{};
    for (int64_t p = 0; p < tail.start; p += L) {
      store(dz + p, dz_and_sums(load_bf16(x + p), load_bf16(dy + p), a, b, shift_minus_mean, inv_std, s, q));
    }
    if (tail.count) {
      c10::BFloat16 pad_x[L], pad_dy[L];
      float out[L];
      tail.copy_in(x, pad_x);
      tail.copy_in(dy, pad_dy);
      store(out, dz_and_sums(load_bf16(pad_x), load_bf16(pad_dy), a, b, shift_minus_mean, inv_std, s, q));
      tail.copy_out(out, dz);
    }
    double ds = 0, dq = 0;
    for (int64_t l = 0; l < L; ++l) ds += s[l], dq += q[l];
    *sum_dz = ds;
    *sum_dz_xhat = dq;
  }

  // Backward, second pass over a plane: ∂L/∂x in bf16, and its sum.
  DIFFUSE_LANE_LOOP
  static void plane_backward_dx_bf16(const c10::BFloat16* x, const float* dz, int64_t pixels, float gamma,
                                     float shift_minus_mean, float inv_std, float m1, float m2, c10::BFloat16* dx,
                                     double* sum_dx) {
    const PlaneTail tail(pixels);
    Lanes s{};
    for (int64_t p = 0; p < tail.start; p += L) {
      const Lanes d =
          group_norm_backward(load_bf16(x + p), load<Lanes>(dz + p), gamma, shift_minus_mean, inv_std, m1, m2);
      s += d;
      store_bf16(dx + p, d);
    }
    if (tail.count) {
      c10::BFloat16 pad_x[L], out[L];
      float pad_dz[L];
      tail.copy_in(x, pad_x);
      tail.copy_in(dz, pad_dz);
      const Lanes d =
          group_norm_backward(load_bf16(pad_x), load<Lanes>(pad_dz), gamma, shift_minus_mean, inv_std, m1, m2);
      for (int64_t l = 0; l < tail.count; ++l) s[l] += d[l];  // the padded lanes are no pixels
      store_bf16(out, d);
      tail.copy_out(out, dx);
    }
    double ds = 0;
    for (int64_t l = 0; l < L; ++l) ds += s[l];
    *sum_dx = ds;
  }

  // Per plane (sample i, channel c): s − μ, 1/σ, a = γ/σ, b = β + (s − μ)·γ/σ.
  struct PlaneCoefficients {
    float shift_minus_mean, inv_std, a, b;
    PlaneCoefficients(const Shape& s, int64_t plane, const float* shift, const float* gamma, const float* beta,
                      const float* mean, const float* inv_std_) {
      const int64_t i = plane / s.channels, c = plane % s.channels, g = c / s.per_group;
      shift_minus_mean = shift[plane] - mean[i * s.groups + g];
      inv_std = inv_std_[i * s.groups + g];
      a = gamma[c] * inv_std;
      b = beta[c] + shift_minus_mean * a;
    }
  };

  static std::vector<torch::Tensor> forward_kernel_nchw_bf16(const torch::Tensor& x, const torch::Tensor& shift,
                                                             const torch::Tensor& gamma, const torch::Tensor& beta,
                                                             int64_t groups, double eps) {
    RECORD_FUNCTION("diffuse::group_norm_silu_nchw_bf16", std::vector<c10::IValue>({x}));
    const auto s = Shape::of_nchw(x, groups);
    torch::Tensor sums = torch::empty({s.n, s.channels}, torch::kFloat64), sums_sq = torch::empty_like(sums);
    const BF16* xp = x.data_ptr<BF16>();
    double *sum = sums.data_ptr<double>(), *sum_sq = sums_sq.data_ptr<double>();
    const int64_t grain = std::max<int64_t>(1, 4096 / s.pixels);
    const float *sh = shift.data_ptr<float>(), *ga = gamma.data_ptr<float>(), *be = beta.data_ptr<float>();
    torch::Tensor mean = torch::empty({s.n, s.groups}, torch::kFloat32), inv_std = torch::empty_like(mean);
    float *mu = mean.data_ptr<float>(), *rs = inv_std.data_ptr<float>();
    torch::Tensor y = torch::empty_like(x);
    BF16* yp = y.data_ptr<BF16>();
    two_passes(
        s.n, s.channels, grain, [&](int64_t k) { plane_sums_bf16(xp + k * s.pixels, s.pixels, sum + k, sum_sq + k); },
        [&](int64_t i) { sample_statistics(s, i, sh, sum, sum_sq, eps, mu, rs); },
        [&](int64_t k) {
          const PlaneCoefficients co(s, k, sh, ga, be, mu, rs);
          plane_norm_silu_bf16(xp + k * s.pixels, s.pixels, co.a, co.b, yp + k * s.pixels);
        });
    return {y, mean, inv_std};
  }

  static std::vector<torch::Tensor> backward_kernel_nchw_bf16(const torch::Tensor& x, const torch::Tensor& shift,
                                                              const torch::Tensor& gamma, const torch::Tensor& beta,
                                                              const torch::Tensor& mean, const torch::Tensor& inv_std,
                                                              const torch::Tensor& dy, int64_t groups) {
    RECORD_FUNCTION("diffuse::group_norm_silu_nchw_bf16_backward", std::vector<c10::IValue>({dy}));
    const auto s = Shape::of_nchw(x, groups);
    torch::Tensor dz = torch::empty(x.sizes(), torch::kFloat32), dx = torch::empty_like(x);
    torch::Tensor sums_dz = torch::empty({s.n, s.channels}, torch::kFloat64), sums_dz_xhat = torch::empty_like(sums_dz),
                  sums_dx = torch::empty_like(sums_dz);
    const BF16 *xp = x.data_ptr<BF16>(), *dyp = dy.data_ptr<BF16>();
    const float *sh = shift.data_ptr<float>(), *ga = gamma.data_ptr<float>(), *be = beta.data_ptr<float>(),
                *mu = mean.data_ptr<float>(), *rs = inv_std.data_ptr<float>();
    float* dzp = dz.data_ptr<float>();
    BF16* dxp = dx.data_ptr<BF16>();
    double *a_sum = sums_dz.data_ptr<double>(), *b_sum = sums_dz_xhat.data_ptr<double>(),
           *dx_sum = sums_dx.data_ptr<double>();
    const int64_t grain = std::max<int64_t>(1, 4096 / s.pixels);
    std::vector<float> m1(s.n * s.groups), m2(s.n * s.groups);
    two_passes(
        s.n, s.channels, grain,
        [&](int64_t k) {
          const PlaneCoefficients co(s, k, sh, ga, be, mu, rs);
          plane_backward_sums_bf16(xp + k * s.pixels, dyp + k * s.pixels, s.pixels, co.a, co.b, co.shift_minus_mean,
                                   co.inv_std, dzp + k * s.pixels, a_sum + k, b_sum + k);
        },
        [&](int64_t i) { sample_backward_means(s, i, ga, a_sum, b_sum, m1.data(), m2.data()); },
        [&](int64_t k) {
          const PlaneCoefficients co(s, k, sh, ga, be, mu, rs);
          const int64_t i = k / s.channels, c = k % s.channels, g = i * s.groups + c / s.per_group;
          plane_backward_dx_bf16(xp + k * s.pixels, dzp + k * s.pixels, s.pixels, ga[c], co.shift_minus_mean,
                                 co.inv_std, m1[g], m2[g], dxp + k * s.pixels, dx_sum + k);
        });
    auto [d_shift, d_gamma, d_beta] = parameter_gradients(s, a_sum, b_sum, dx_sum);
    return {dx, d_shift, d_gamma, d_beta};
  }
};

// The bf16 kernels run on 16 lanes (their NHWC units are 16 channels; bf16 runs where AVX-512
// does); the float32 blocked ones on x's block.
constexpr int64_t kBf16Lanes = 16;

template <class T, class... Args>
std::vector<torch::Tensor> forward_kernel(const torch::Tensor& x, Args&&... args) {
  if constexpr (std::is_same_v<T, float>) {
    if (x.size(4) == 8) return Kernels<8>::template forward_kernel<T>(x, std::forward<Args>(args)...);
  }
  return Kernels<16>::template forward_kernel<T>(x, std::forward<Args>(args)...);
}

template <class T, class... Args>
std::vector<torch::Tensor> backward_kernel(const torch::Tensor& x, Args&&... args) {
  if constexpr (std::is_same_v<T, float>) {
    if (x.size(4) == 8) return Kernels<8>::template backward_kernel<T>(x, std::forward<Args>(args)...);
  }
  return Kernels<16>::template backward_kernel<T>(x, std::forward<Args>(args)...);
}

struct GroupNormSiluNchwBf16Function : public torch::autograd::Function<GroupNormSiluNchwBf16Function> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& shift, const torch::Tensor& gamma, const torch::Tensor& beta,
                               int64_t groups, double eps) {
    auto out = Kernels<kBf16Lanes>::forward_kernel_nchw_bf16(x, shift, gamma, beta, groups, eps);
    ctx->save_for_backward({x, shift, gamma, beta, out[1], out[2]});
    ctx->saved_data["groups"] = groups;
    return out[0];
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto v = ctx->get_saved_variables();
    auto g = Kernels<kBf16Lanes>::backward_kernel_nchw_bf16(
        v[0], v[1], v[2], v[3], v[4], v[5], gradient_like(v[0], grads[0]), ctx->saved_data["groups"].toInt());
    return {g[0], g[1], g[2], g[3], torch::Tensor(), torch::Tensor()};
  }
};

Dropout make_dropout(double p, int64_t seed) {
  Dropout d;
  if (p <= 0) return d;
  d.active = true;
  d.seed_lo = static_cast<uint32_t>(seed);
  d.seed_hi = static_cast<uint32_t>(static_cast<uint64_t>(seed) >> 32);
  d.threshold = static_cast<uint32_t>(std::min(p * 2147483648.0, 2147483647.0));
  d.scale = static_cast<float>(1.0 / (1.0 - p));
  return d;
}

// x: float32 blocked or bf16 NHWC (Units). Outputs: y, and with pass_input also x itself.
// with_silu false: the norm alone, y = z (the attention block's norm).
// LibTorch hands an input returned as an output back as a new view of it whose gradient arrives
// here as grads[1]: a residual connection that reads x through it has its gradient of x added
// inside the backward kernel's last pass, instead of LibTorch adding the two gradients of x in a
// pass over memory of its own.
struct GroupNormSiluFunction : public torch::autograd::Function<GroupNormSiluFunction> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x5,
                                                const torch::Tensor& shift, const torch::Tensor& gamma,
                                                const torch::Tensor& beta, int64_t groups, double eps, bool with_silu,
                                                double dropout, int64_t seed, bool pass_input) {
    const auto d = make_dropout(dropout, seed);
    auto out = x5.dim() == 4 ? forward_kernel<BF16>(x5, shift, gamma, beta, groups, eps, with_silu, d)
                             : forward_kernel<float>(x5, shift, gamma, beta, groups, eps, with_silu, d);
    ctx->save_for_backward({x5, shift, gamma, beta, out[1], out[2]});
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["with_silu"] = with_silu;
    ctx->saved_data["dropout"] = dropout;
    ctx->saved_data["seed"] = seed;
    if (pass_input) return {out[0], x5};
    return {out[0]};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto v = ctx->get_saved_variables();
    const auto dx_also = grads.size() > 1 && grads[1].defined() ? gradient_like(v[0], grads[1]) : torch::Tensor();
    const auto dy = gradient_like(v[0], grads[0]);
    const int64_t groups = ctx->saved_data["groups"].toInt();
    const bool with_silu = ctx->saved_data["with_silu"].toBool();
    const auto d = make_dropout(ctx->saved_data["dropout"].toDouble(), ctx->saved_data["seed"].toInt());
    auto g = v[0].dim() == 4
                 ? backward_kernel<BF16>(v[0], v[1], v[2], v[3], v[4], v[5], dy, dx_also, groups, with_silu, d)
                 : backward_kernel<float>(v[0], v[1], v[2], v[3], v[4], v[5], dy, dx_also, groups, with_silu, d);
    return {g[0],           g[1],           g[2],           g[3],           torch::Tensor(),
            torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

// y = SiLU(GroupNorm(cat(a, b))) and x = cat(a, b) itself, a and b float32 blocked: the kernel
// writes x while its first pass reads a and b (so no separate concatenation), keeps x for
// backward, and writes ∂L/∂a and ∂L/∂b directly; LibTorch's cat would hand its gradient on as two
// strided slices, each copied again by the next kernel that wants it contiguous. x's own gradient
// (grads[1], from the residual connection that reads x) is added inside the kernel as in
// GroupNormSiluFunction.
struct GroupNormSiluCatFunction : public torch::autograd::Function<GroupNormSiluCatFunction> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& a5,
                                                const torch::Tensor& b5, const torch::Tensor& zero_shift,
                                                const torch::Tensor& gamma, const torch::Tensor& beta, int64_t groups,
                                                double eps) {
    auto out = cat_forward(a5, b5, zero_shift, gamma, beta, groups, eps);
    ctx->save_for_backward({out[3], zero_shift, gamma, beta, out[1], out[2]});
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["a_blocks"] = a5.size(1);
    return {out[0], out[3]};
  }

  // {y, mean, 1/σ, x}
  static std::vector<torch::Tensor> cat_forward(const torch::Tensor& a5, const torch::Tensor& b5,
                                                const torch::Tensor& zero_shift, const torch::Tensor& gamma,
                                                const torch::Tensor& beta, int64_t groups, double eps) {
    const int64_t L = a5.size(4);
    torch::Tensor x5 = torch::empty({a5.size(0), a5.size(1) + b5.size(1), a5.size(2), a5.size(3), L});
    const CatParts<const float*> parts{a5.data_ptr<float>(), b5.data_ptr<float>(), a5.size(1), b5.size(1),
                                       a5.size(2) * a5.size(3) * L};
    auto out = forward_kernel<float>(x5, zero_shift, gamma, beta, groups, eps, /*with_silu=*/true, Dropout{}, &parts);
    out.push_back(x5);
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto v = ctx->get_saved_variables();
    const auto& x5 = v[0];
    const auto dx_also = grads[1].defined() ? gradient_like(x5, grads[1]) : torch::Tensor();
    const int64_t a_blocks = ctx->saved_data["a_blocks"].toInt(), b_blocks = x5.size(1) - a_blocks, L = x5.size(4);
    torch::Tensor da = torch::empty({x5.size(0), a_blocks, x5.size(2), x5.size(3), L});
    torch::Tensor db = torch::empty({x5.size(0), b_blocks, x5.size(2), x5.size(3), L});
    const CatParts<float*> split{da.data_ptr<float>(), db.data_ptr<float>(), a_blocks, b_blocks,
                                 x5.size(2) * x5.size(3) * L};
    auto g = backward_kernel<float>(x5, v[1], v[2], v[3], v[4], v[5], gradient_like(x5, grads[0]), dx_also,
                                    ctx->saved_data["groups"].toInt(), /*with_silu=*/true, Dropout{}, &split);
    return {da, db, torch::Tensor(), g[2], g[3], torch::Tensor(), torch::Tensor()};
  }
};

// The shift, γ and β as the kernels take them, after checking their shapes against x's n images
// and `channels` (and `groups`): float32 and contiguous, a missing shift as zeros (autograd
// functions take no undefined tensors). `who` names the caller in the messages.
struct NormParameters {
  torch::Tensor shift, gamma, beta;
};

NormParameters checked_parameters(const char* who, int64_t n, int64_t channels, int64_t groups,
                                  const torch::Tensor& shift, const torch::Tensor& gamma, const torch::Tensor& beta) {
  TORCH_CHECK(groups > 0 && channels % groups == 0, who, ": ", groups, " groups do not divide ", channels, " channels");
  TORCH_CHECK(gamma.numel() == channels && beta.numel() == channels, who, ": gamma and beta need ", channels,
              " entries");
  TORCH_CHECK(!shift.defined() || (shift.dim() == 2 && shift.size(0) == n && shift.size(1) == channels), who,
              ": shift must be [", n, ", ", channels, "]");
  return {shift.defined() ? shift.to(torch::kFloat32).contiguous() : torch::zeros({n, channels}),
          gamma.to(torch::kFloat32).contiguous(), beta.to(torch::kFloat32).contiguous()};
}

// The checked and prepared call, x float32 blocked or bf16 NHWC (`who` says which was asked
// for); with_silu and pass_input as in GroupNormSiluFunction.
torch::autograd::variable_list apply_group_norm_silu(const char* who, const torch::Tensor& x5,
                                                     const torch::Tensor& shift, const torch::Tensor& gamma,
                                                     const torch::Tensor& beta, int64_t groups, double eps,
                                                     double dropout, bool pass_input, bool with_silu = true) {
  const bool nhwc = x5.dim() == 4;
  if (nhwc) {
    TORCH_CHECK(x5.device().is_cpu() && x5.scalar_type() == torch::kBFloat16 && x5.size(1) % kBf16Lanes == 0, who,
                ": x must be a bf16 CPU tensor [N, C, H, W] with C a multiple of 16, got ", x5.sizes(), " ",
                x5.scalar_type());
  } else {
    check_blocked_float32(who, "x", x5);
  }
  const auto p =
      checked_parameters(who, x5.size(0), nhwc ? x5.size(1) : x5.size(1) * x5.size(4), groups, shift, gamma, beta);
  TORCH_CHECK(dropout >= 0 && dropout < 1, who, ": dropout must be in [0, 1), got ", dropout);
  // The mask's seed comes from LibTorch's default generator, so torch::manual_seed (and a resumed
  // run's saved generator state) reproduces it.
  const int64_t seed = dropout > 0 ? torch::randint(std::numeric_limits<int64_t>::max(), {1}, torch::kLong).item<int64_t>()
                                   : 0;
  const auto x = nhwc ? x5.contiguous(torch::MemoryFormat::ChannelsLast) : x5.contiguous();
  return GroupNormSiluFunction::apply(x, p.shift, p.gamma, p.beta, groups, eps, with_silu, dropout, seed, pass_input);
}

}  // namespace

torch::Tensor group_norm_silu_blocked(const torch::Tensor& x5, const torch::Tensor& shift, const torch::Tensor& gamma,
                                      const torch::Tensor& beta, int64_t groups, double eps, double dropout) {
  return apply_group_norm_silu("group_norm_silu_blocked", x5, shift, gamma, beta, groups, eps, dropout,
                               /*pass_input=*/false)[0];
}

torch::Tensor group_norm_blocked(const torch::Tensor& x5, const torch::Tensor& gamma, const torch::Tensor& beta,
                                 int64_t groups, double eps) {
  return apply_group_norm_silu("group_norm_blocked", x5, {}, gamma, beta, groups, eps, 0.0, /*pass_input=*/false,
                               /*with_silu=*/false)[0];
}

std::pair<torch::Tensor, torch::Tensor> group_norm_silu_blocked_and_input(const torch::Tensor& x5,
                                                                          const torch::Tensor& gamma,
                                                                          const torch::Tensor& beta, int64_t groups,
                                                                          double eps) {
  if (!gradient_wanted({x5, gamma, beta})) return {group_norm_silu_blocked(x5, {}, gamma, beta, groups, eps), x5};
  auto out = apply_group_norm_silu("group_norm_silu_blocked", x5, {}, gamma, beta, groups, eps, 0.0,
                                   /*pass_input=*/true);
  return {out[0], out[1]};
}

std::pair<torch::Tensor, torch::Tensor> group_norm_silu_blocked_cat_and_input(const torch::Tensor& a5,
                                                                              const torch::Tensor& b5,
                                                                              const torch::Tensor& gamma,
                                                                              const torch::Tensor& beta, int64_t groups,
                                                                              double eps) {
  const char* who = "group_norm_silu_blocked_cat_and_input";
  check_blocked_float32(who, "a", a5);
  check_blocked_float32(who, "b", b5);
  TORCH_CHECK(
      a5.size(0) == b5.size(0) && a5.size(2) == b5.size(2) && a5.size(3) == b5.size(3) && a5.size(4) == b5.size(4), who,
      ": a and b differ in images, size or block: ", a5.sizes(), " and ", b5.sizes());
  const auto p = checked_parameters(who, a5.size(0), (a5.size(1) + b5.size(1)) * a5.size(4), groups, {}, gamma, beta);
  const auto a = a5.contiguous(), b = b5.contiguous();
  if (!gradient_wanted({a5, b5, gamma, beta})) {
    auto out = GroupNormSiluCatFunction::cat_forward(a, b, p.shift, p.gamma, p.beta, groups, eps);
    return {out[0], out[3]};
  }
  auto out = GroupNormSiluCatFunction::apply(a, b, p.shift, p.gamma, p.beta, groups, eps);
  return {out[0], out[1]};
}

torch::Tensor group_norm_silu_nhwc_bf16(const torch::Tensor& x, const torch::Tensor& shift, const torch::Tensor& gamma,
                                        const torch::Tensor& beta, int64_t groups, double eps, double dropout) {
  TORCH_CHECK(x.dim() == 4, "group_norm_silu_nhwc_bf16: x must be [N, C, H, W], got ", x.sizes());
  return apply_group_norm_silu("group_norm_silu_nhwc_bf16", x, shift, gamma, beta, groups, eps, dropout,
                               /*pass_input=*/false)[0];
}

std::pair<torch::Tensor, torch::Tensor> group_norm_silu_nhwc_bf16_and_input(const torch::Tensor& x,
                                                                            const torch::Tensor& gamma,
                                                                            const torch::Tensor& beta, int64_t groups,
                                                                            double eps) {
  TORCH_CHECK(x.dim() == 4, "group_norm_silu_nhwc_bf16: x must be [N, C, H, W], got ", x.sizes());
  if (!gradient_wanted({x, gamma, beta})) return {group_norm_silu_nhwc_bf16(x, {}, gamma, beta, groups, eps), x};
  auto out = apply_group_norm_silu("group_norm_silu_nhwc_bf16", x, {}, gamma, beta, groups, eps, 0.0,
                                   /*pass_input=*/true);
  return {out[0], out[1]};
}

bool group_norm_silu_nhwc_bf16_applies(const torch::Tensor& x, const torch::Tensor& gamma) {
  return x.device().is_cpu() && x.scalar_type() == torch::kBFloat16 && x.dim() == 4 && x.size(1) % kBf16Lanes == 0 &&
         x.size(1) > 1 && x.is_contiguous(torch::MemoryFormat::ChannelsLast) && gamma.defined() &&
         gamma.scalar_type() == torch::kFloat32;
}

bool group_norm_silu_nchw_bf16_applies(const torch::Tensor& x, const torch::Tensor& gamma) {
  return x.device().is_cpu() && x.scalar_type() == torch::kBFloat16 && x.dim() == 4 && x.is_contiguous() &&
         gamma.defined() && gamma.scalar_type() == torch::kFloat32;
}

torch::Tensor group_norm_silu_nchw_bf16(const torch::Tensor& x, const torch::Tensor& shift, const torch::Tensor& gamma,
                                        const torch::Tensor& beta, int64_t groups, double eps) {
  TORCH_CHECK(x.dim() == 4 && x.device().is_cpu() && x.scalar_type() == torch::kBFloat16,
              "group_norm_silu_nchw_bf16: x must be a bf16 CPU tensor [N, C, H, W], got ", x.sizes());
  const auto p = checked_parameters("group_norm_silu_nchw_bf16", x.size(0), x.size(1), groups, shift, gamma, beta);
  if (!gradient_wanted({x, shift, gamma, beta})) {
    return Kernels<kBf16Lanes>::forward_kernel_nchw_bf16(x.contiguous(), p.shift, p.gamma, p.beta, groups, eps)[0];
  }
  return GroupNormSiluNchwBf16Function::apply(x.contiguous(), p.shift, p.gamma, p.beta, groups, eps);
}

}  // namespace diffuse
