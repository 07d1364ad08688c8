#include "diffuse/runtime/blocked_conv_out.h"

#include "diffuse/runtime/blocked_layout.h"
#include "diffuse/runtime/gradient_wanted.h"
#include "conv_loops.h"
#include "lanes.h"

#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <vector>

namespace diffuse {

namespace {

using lanes::load;
using lanes::store;

// The kernels for an input blocked by L channels.
template <int64_t L>
struct ConvOut {
  using Lanes = typename lanes::Of<L>::Floats;

  struct Dims {
    int64_t n, blocks, h, w, o, k, pad;
  };

  static Dims dims_of(const torch::Tensor& x5, const torch::Tensor& weight) {
    return {x5.size(0), x5.size(1), x5.size(2), x5.size(3), weight.size(0), weight.size(2), weight.size(2) / 2};
  }

  // W [O, C, k, k] → [O, C/L, k, k, L]: a tap's L channel weights side by side, like x5's lanes.
  static torch::Tensor weights_by_lane(const torch::Tensor& weight, const Dims& d) {
    return weight.reshape({d.o, d.blocks, L, d.k, d.k}).permute({0, 1, 3, 4, 2}).contiguous();
  }

  // The loops below keep one running sum per pixel of a row (acc[w]) or four per tap, never one
  // sum across a whole loop: a single accumulator makes every multiply-add wait for the one before
  // (four cycles each), which bounds the loop by latency instead of throughput.
  // (d by value in these: through a reference the compiler reloads its fields after every store to
  // the float scratch, which might alias them.)

  // One output row (image n, row h) of every output channel: acc[w] = Σ_{cb,i,j} W ⊙ x over the
  // row's taps, then y = b + the sum of acc[w]'s L lanes. acc: d.w · L floats of scratch (plain
  // floats, read and written unaligned: a vector of Lanes is not 64-byte aligned by the allocator).
  static DIFFUSE_LANE_LOOP void forward_row(const float* x, const float* wp, const float* b, float* out, Dims d,
                                            int64_t row, float* acc) {
    const int64_t n = row / d.h, h = row % d.h;
    for (int64_t o = 0; o < d.o; ++o) {
      std::fill(acc, acc + d.w * L, 0.0f);
      for (int64_t cb = 0; cb < d.blocks; ++cb) {
        for (int64_t i = 0; i < d.k; ++i) {
          const int64_t ih = h + i - d.pad;
          if (ih < 0 || ih >= d.h) continue;
          const float* x_row = x + ((n * d.blocks + cb) * d.h + ih) * d.w * L;
          for (int64_t j = 0; j < d.k; ++j) {
            const Lanes tap = load<Lanes>(wp + (((o * d.blocks + cb) * d.k + i) * d.k + j) * L);
            const Columns c(d.w, j, d.pad);
            for (int64_t w = c.lo; w < c.hi; ++w) {
              store(acc + w * L, load<Lanes>(acc + w * L) + tap * load<Lanes>(x_row + (w + j - d.pad) * L));
            }
          }
        }
      }
      for (int64_t w = 0; w < d.w; ++w) {
        float sum = b != nullptr ? b[o] : 0.0f;
        for (int64_t l = 0; l < L; ++l) sum += acc[w * L + l];
        out[((n * d.o + o) * d.h + h) * d.w + w] = sum;
      }
    }
  }

  static torch::Tensor forward_kernel(const torch::Tensor& x5, const torch::Tensor& weight, const torch::Tensor& bias) {
    RECORD_FUNCTION("diffuse::conv_blocked_to_nchw", std::vector<c10::IValue>({x5}));
    const Dims d = dims_of(x5, weight);
    const torch::Tensor wl = weights_by_lane(weight, d);
    torch::Tensor y = torch::empty({d.n, d.o, d.h, d.w}, x5.options());
    const float* x = x5.data_ptr<float>();
    const float* wp = wl.data_ptr<float>();
    const float* b = bias.defined() ? bias.data_ptr<float>() : nullptr;
    float* out = y.data_ptr<float>();
    at::parallel_for(0, d.n * d.h, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> acc(d.w * L);
      for (int64_t row = begin; row < end; ++row) forward_row(x, wp, b, out, d, row, acc.data());
    });
    return y;
  }

  // ∂L/∂x of one row (image n, block cb, row ih): each input pixel gathers the output gradients its
  // taps reached, acc[iw] = Σ_{o,i,j} ∂L/∂y[n, o, ih − i + p, iw − j + p] · W[o, cb, i, j].
  static DIFFUSE_LANE_LOOP void backward_data_row(const float* wp, const float* gy, float* gx, Dims d, int64_t row,
                                                  float* acc) {
    const int64_t n = row / (d.blocks * d.h), cb = (row / d.h) % d.blocks, ih = row % d.h;
    std::fill(acc, acc + d.w * L, 0.0f);
    for (int64_t o = 0; o < d.o; ++o) {
      for (int64_t i = 0; i < d.k; ++i) {
        const int64_t h = ih - i + d.pad;
        if (h < 0 || h >= d.h) continue;
        const float* gy_row = gy + ((n * d.o + o) * d.h + h) * d.w;
        for (int64_t j = 0; j < d.k; ++j) {
          const Lanes tap = load<Lanes>(wp + (((o * d.blocks + cb) * d.k + i) * d.k + j) * L);
          // input column iw reads output column iw − j + p: the columns of tap k − 1 − j's range
          const Columns c(d.w, d.k - 1 - j, d.pad);
          for (int64_t iw = c.lo; iw < c.hi; ++iw) {
            store(acc + iw * L, load<Lanes>(acc + iw * L) + gy_row[iw - j + d.pad] * tap);
          }
        }
      }
    }
    float* gx_row = gx + ((n * d.blocks + cb) * d.h + ih) * d.w * L;
    std::copy(acc, acc + d.w * L, gx_row);
  }

  static torch::Tensor backward_data(const torch::Tensor& x5, const torch::Tensor& weight,
                                     const torch::Tensor& grad_y) {
    const Dims d = dims_of(x5, weight);
    const torch::Tensor wl = weights_by_lane(weight, d);
    torch::Tensor grad_x = torch::empty_like(x5);
    const float* wp = wl.data_ptr<float>();
    const float* gy = grad_y.data_ptr<float>();
    float* gx = grad_x.data_ptr<float>();
    at::parallel_for(0, d.n * d.blocks * d.h, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> acc(d.w * L);
      for (int64_t row = begin; row < end; ++row) backward_data_row(wp, gy, gx, d, row, acc.data());
    });
    return grad_x;
  }

  // One image's share of ∂L/∂W, added to acc ([O, C/L, k, k, L]): per tap, Σ_{h,w} ∂L/∂y[h, w] ·
  // x[h + i − p, w + j − p] in four running sums over interleaved columns.
  static DIFFUSE_LANE_LOOP void backward_weights_image(const float* x, const float* gy, float* acc, Dims d, int64_t n) {
    for (int64_t o = 0; o < d.o; ++o) {
      for (int64_t cb = 0; cb < d.blocks; ++cb) {
        for (int64_t i = 0; i < d.k; ++i) {
          for (int64_t j = 0; j < d.k; ++j) {
            Lanes s0{}, s1{}, s2{}, s3{};
            const Columns c(d.w, j, d.pad);
            for (int64_t h = std::max<int64_t>(0, d.pad - i); h < std::min(d.h, d.h + d.pad - i); ++h) {
              const float* gy_row = gy + ((n * d.o + o) * d.h + h) * d.w;
              const float* x_row = x + (((n * d.blocks + cb) * d.h + h + i - d.pad) * d.w + j - d.pad) * L;
              int64_t w = c.lo;
              for (; w + 4 <= c.hi; w += 4) {
                s0 += gy_row[w] * load<Lanes>(x_row + w * L);
                s1 += gy_row[w + 1] * load<Lanes>(x_row + (w + 1) * L);
                s2 += gy_row[w + 2] * load<Lanes>(x_row + (w + 2) * L);
                s3 += gy_row[w + 3] * load<Lanes>(x_row + (w + 3) * L);
              }
              for (; w < c.hi; ++w) s0 += gy_row[w] * load<Lanes>(x_row + w * L);
            }
            float* av = acc + (((o * d.blocks + cb) * d.k + i) * d.k + j) * L;
            store(av, load<Lanes>(av) + ((s0 + s1) + (s2 + s3)));
          }
        }
      }
    }
  }

  // ∂L/∂W: partial sums over fixed chunks of images, added in chunk order (the same result on
  // any number of threads), then back to [O, C, k, k].
  static torch::Tensor backward_weights(const torch::Tensor& x5, const torch::Tensor& weight,
                                        const torch::Tensor& grad_y) {
    const Dims d = dims_of(x5, weight);
    const int64_t per_tap = d.o * d.blocks * d.k * d.k * L;
    torch::Tensor partial = torch::zeros({image_chunks(d.n), per_tap}, x5.options());
    const float* x = x5.data_ptr<float>();
    const float* gy = grad_y.data_ptr<float>();
    float* part = partial.data_ptr<float>();
    for_images_in_chunks(
        d.n, [&](int64_t chunk, int64_t n) { backward_weights_image(x, gy, part + chunk * per_tap, d, n); });
    // [O, C/L, k, k, L] → [O, C, k, k]
    return partial.sum(0).reshape({d.o, d.blocks, d.k, d.k, L}).permute({0, 1, 4, 2, 3}).reshape(weight.sizes());
  }
};

struct ConvBlockedToNchwFunction : public torch::autograd::Function<ConvBlockedToNchwFunction> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x5, const torch::Tensor& weight,
                               const torch::Tensor& bias, bool has_bias) {
    ctx->save_for_backward({x5, weight});
    ctx->saved_data["has_bias"] = has_bias;
    const auto b = has_bias ? bias : torch::Tensor();
    return x5.size(4) == 16 ? ConvOut<16>::forward_kernel(x5, weight, b) : ConvOut<8>::forward_kernel(x5, weight, b);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    RECORD_FUNCTION("diffuse::conv_blocked_to_nchw_backward", std::vector<c10::IValue>({grads[0]}));
    const auto saved = ctx->get_saved_variables();
    const auto grad_y = grads[0].contiguous();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    torch::Tensor gx, gw, gb;
    const bool by_16 = saved[0].size(4) == 16;
    if (ctx->needs_input_grad(0)) {
      gx = by_16 ? ConvOut<16>::backward_data(saved[0], saved[1], grad_y)
                 : ConvOut<8>::backward_data(saved[0], saved[1], grad_y);
    }
    if (ctx->needs_input_grad(1)) {
      gw = by_16 ? ConvOut<16>::backward_weights(saved[0], saved[1], grad_y)
                 : ConvOut<8>::backward_weights(saved[0], saved[1], grad_y);
    }
    // ∂L/∂b = Σ_{n,h,w} ∂L/∂y, summed in float64: with one output channel (conv_out of a grey
    // image) it is one sum of N·H·W terms that mostly cancel, and float32 summation left it 7e-5
    // off in relative terms now and then (the float64 comparison test failed 1 run in 60)
    if (has_bias && ctx->needs_input_grad(2)) gb = grad_y.sum({0, 2, 3}, false, torch::kFloat64).to(grad_y.scalar_type());
    return {gx, gw, gb, torch::Tensor()};
  }
};

}  // namespace

torch::Tensor conv_blocked_to_nchw(const torch::Tensor& x5, const torch::Tensor& weight, const torch::Tensor& bias) {
  check_blocked_float32("conv_blocked_to_nchw", "x", x5);
  const int64_t L = x5.size(4);
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == x5.size(1) * L && weight.size(2) == weight.size(3) &&
                  weight.size(2) % 2 == 1 && weight.scalar_type() == torch::kFloat32,
              "conv_blocked_to_nchw: weight must be float32 [O, ", x5.size(1) * L, ", k, k] with k odd, got ",
              weight.sizes());
  TORCH_CHECK(!bias.defined() || (bias.dim() == 1 && bias.size(0) == weight.size(0)),
              "conv_blocked_to_nchw: bias must be [", weight.size(0), "]");
  const auto x = x5.contiguous(), w = weight.contiguous();
  if (!gradient_wanted({x5, weight, bias})) {
    const auto b = bias.defined() ? bias.contiguous() : torch::Tensor();
    return L == 16 ? ConvOut<16>::forward_kernel(x, w, b) : ConvOut<8>::forward_kernel(x, w, b);
  }
  // autograd functions take no undefined tensors: a missing bias travels as zeros without a gradient
  const auto b = bias.defined() ? bias.contiguous() : torch::zeros({weight.size(0)}, x5.options());
  return ConvBlockedToNchwFunction::apply(x, w, b, bias.defined());
}

}  // namespace diffuse
