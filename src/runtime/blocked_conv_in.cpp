#include "diffuse/runtime/blocked_conv_in.h"

#include "diffuse/runtime/blocked_layout.h"
#include "diffuse/runtime/gradient_wanted.h"
#include "conv_loops.h"
#include "lanes.h"

#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <tuple>
#include <utility>
#include <vector>

namespace diffuse {

namespace {

using lanes::load;
using lanes::store;

// The kernels for an output blocked by L channels.
template <int64_t L>
struct ConvIn {
  using Lanes = typename lanes::Of<L>::Floats;

  // blocks: O/L, the output's channel blocks. Passed by value into the loops (through a reference
  // the compiler reloads the fields after every store to the float scratch, which might alias them).
  struct Dims {
    int64_t n, c, blocks, h, w, k, pad;
  };

  static Dims dims_of(const torch::Tensor& x, const torch::Tensor& weight) {
    return {x.size(0), x.size(1), weight.size(0) / L, x.size(2), x.size(3), weight.size(2), weight.size(2) / 2};
  }

  // W [O, C, k, k] → [O/L, C, k, k, L]: one tap's weights of L output channels side by side.
  static torch::Tensor weights_by_lane(const torch::Tensor& weight, const Dims& d) {
    return weight.reshape({d.blocks, L, d.c, d.k, d.k}).permute({0, 2, 3, 4, 1}).contiguous();
  }

  // Output pixels the forward pass sums at once, each in its own register.
  static constexpr int64_t kPixels = 8;

  // The k input rows an output row h reads, for every input channel, each zero-padded by p on both
  // sides and by kPixels more at the end (a block of output pixels may reach past the row):
  // pad[(c·k + i) · stride + p + w] = x[n, c, h + i − p, w], rows outside the image all zero.
  static void padded_rows(const float* x, Dims d, int64_t n, int64_t h, int64_t stride, float* pad) {
    std::fill(pad, pad + d.c * d.k * stride, 0.0f);
    for (int64_t c = 0; c < d.c; ++c) {
      for (int64_t i = 0; i < d.k; ++i) {
        const int64_t ih = h + i - d.pad;
        if (ih < 0 || ih >= d.h) continue;
        const float* from = x + ((n * d.c + c) * d.h + ih) * d.w;
        std::copy(from, from + d.w, pad + (c * d.k + i) * stride + d.pad);
      }
    }
  }

  // One output row (image n, row h) of every block: y5 = b + Σ_{c,i,j} x · W over blocks of kPixels
  // output pixels, their sums in registers (independent chains of multiply-adds).
  static DIFFUSE_LANE_LOOP void forward_row(const float* pad, int64_t stride, const float* wl, const float* b,
                                            float* y5, Dims d, int64_t n, int64_t h) {
    for (int64_t ob = 0; ob < d.blocks; ++ob) {
      float* out = y5 + ((n * d.blocks + ob) * d.h + h) * d.w * L;
      const Lanes bias = load<Lanes>(b + ob * L);
      for (int64_t w0 = 0; w0 < d.w; w0 += kPixels) {
        Lanes acc[kPixels];
        for (auto& a : acc) a = bias;
        for (int64_t c = 0; c < d.c; ++c) {
          for (int64_t i = 0; i < d.k; ++i) {
            const float* row = pad + (c * d.k + i) * stride + w0;
            for (int64_t j = 0; j < d.k; ++j) {
              const Lanes tap = load<Lanes>(wl + (((ob * d.c + c) * d.k + i) * d.k + j) * L);
              for (int64_t q = 0; q < kPixels; ++q) acc[q] += row[q + j] * tap;
            }
          }
        }
        for (int64_t q = 0; q < std::min(kPixels, d.w - w0); ++q) store(out + (w0 + q) * L, acc[q]);
      }
    }
  }

  static torch::Tensor forward_kernel(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias) {
    RECORD_FUNCTION("diffuse::conv_nchw_to_blocked", std::vector<c10::IValue>({x}));
    const Dims d = dims_of(x, weight);
    const torch::Tensor wl = weights_by_lane(weight, d);
    torch::Tensor y5 = torch::empty({d.n, d.blocks, d.h, d.w, L}, x.options());
    const float* xp = x.data_ptr<float>();
    const float* wp = wl.data_ptr<float>();
    const float* b = bias.data_ptr<float>();
    float* out = y5.data_ptr<float>();
    const int64_t stride = d.w + 2 * d.pad + kPixels;
    at::parallel_for(0, d.n * d.h, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> pad(d.c * d.k * stride);
      for (int64_t row = begin; row < end; ++row) {
        padded_rows(xp, d, row / d.h, row % d.h, stride, pad.data());
        forward_row(pad.data(), stride, wp, b, out, d, row / d.h, row % d.h);
      }
    });
    return y5;
  }

  // One image's share of ∂L/∂W ([O/L, C, k, k, L], added to acc) and of ∂L/∂b ([O/L, L], added
  // to acc_bias): per tap, Σ_{h,w} ∂L/∂y5[h, w] · x[h + i − p, w + j − p] in four running sums over
  // interleaved columns.
  static DIFFUSE_LANE_LOOP void backward_weights_image(const float* x, const float* gy5, float* acc, float* acc_bias,
                                                       Dims d, int64_t n) {
    for (int64_t ob = 0; ob < d.blocks; ++ob) {
      const float* gy_image = gy5 + (n * d.blocks + ob) * d.h * d.w * L;
      Lanes bias{};
      for (int64_t p = 0; p < d.h * d.w; ++p) bias += load<Lanes>(gy_image + p * L);
      store(acc_bias + ob * L, load<Lanes>(acc_bias + ob * L) + bias);
      for (int64_t c = 0; c < d.c; ++c) {
        for (int64_t i = 0; i < d.k; ++i) {
          for (int64_t j = 0; j < d.k; ++j) {
            Lanes s0{}, s1{}, s2{}, s3{};
            const Columns cols(d.w, j, d.pad);
            for (int64_t h = std::max<int64_t>(0, d.pad - i); h < std::min(d.h, d.h + d.pad - i); ++h) {
              const float* gy_row = gy_image + h * d.w * L;
              const float* x_row = x + ((n * d.c + c) * d.h + h + i - d.pad) * d.w + j - d.pad;
              int64_t w = cols.lo;
              for (; w + 4 <= cols.hi; w += 4) {
                s0 += x_row[w] * load<Lanes>(gy_row + w * L);
                s1 += x_row[w + 1] * load<Lanes>(gy_row + (w + 1) * L);
                s2 += x_row[w + 2] * load<Lanes>(gy_row + (w + 2) * L);
                s3 += x_row[w + 3] * load<Lanes>(gy_row + (w + 3) * L);
              }
              for (; w < cols.hi; ++w) s0 += x_row[w] * load<Lanes>(gy_row + w * L);
            }
            float* av = acc + (((ob * d.c + c) * d.k + i) * d.k + j) * L;
            store(av, load<Lanes>(av) + ((s0 + s1) + (s2 + s3)));
          }
        }
      }
    }
  }

  // ∂L/∂W and ∂L/∂b: partial sums over fixed chunks of images, added in chunk order (the same
  // result on any number of threads; ∂L/∂b in float64 across chunks), then back to [O, C, k, k].
  static std::pair<torch::Tensor, torch::Tensor> backward_weights(const torch::Tensor& x, const torch::Tensor& weight,
                                                                  const torch::Tensor& grad_y5) {
    const Dims d = dims_of(x, weight);
    const int64_t per_chunk = d.blocks * d.c * d.k * d.k * L, bias_per_chunk = d.blocks * L;
    const int64_t chunks = image_chunks(d.n);
    torch::Tensor partial = torch::zeros({chunks, per_chunk}, x.options());
    torch::Tensor partial_bias = torch::zeros({chunks, bias_per_chunk}, x.options());
    const float* xp = x.data_ptr<float>();
    const float* gy = grad_y5.data_ptr<float>();
    float *part = partial.data_ptr<float>(), *part_bias = partial_bias.data_ptr<float>();
    for_images_in_chunks(d.n, [&](int64_t chunk, int64_t n) {
      backward_weights_image(xp, gy, part + chunk * per_chunk, part_bias + chunk * bias_per_chunk, d, n);
    });
    // [O/L, C, k, k, L] → [O, C, k, k]
    auto grad_w = partial.sum(0).reshape({d.blocks, d.c, d.k, d.k, L}).permute({0, 4, 1, 2, 3}).reshape(weight.sizes());
    auto grad_b = partial_bias.sum(0, false, torch::kFloat64).to(torch::kFloat32);  // [O/L · L] = [O]
    return {grad_w, grad_b};
  }

  // ∂L/∂x of one input row (image n, channel c, row ih): acc[iw] gathers W ⊙ ∂L/∂y5 over the taps
  // that read pixel iw, then its L lanes are summed. acc: d.w · L floats of scratch.
  static DIFFUSE_LANE_LOOP void backward_data_row(const float* wl, const float* gy5, float* gx, Dims d, int64_t row,
                                                  float* acc) {
    const int64_t n = row / (d.c * d.h), c = (row / d.h) % d.c, ih = row % d.h;
    std::fill(acc, acc + d.w * L, 0.0f);
    for (int64_t ob = 0; ob < d.blocks; ++ob) {
      for (int64_t i = 0; i < d.k; ++i) {
        const int64_t h = ih - i + d.pad;
        if (h < 0 || h >= d.h) continue;
        const float* gy_row = gy5 + ((n * d.blocks + ob) * d.h + h) * d.w * L;
        for (int64_t j = 0; j < d.k; ++j) {
          const Lanes tap = load<Lanes>(wl + (((ob * d.c + c) * d.k + i) * d.k + j) * L);
          // input column iw is read by output column iw − j + p: the columns of tap k − 1 − j's range
          const Columns cols(d.w, d.k - 1 - j, d.pad);
          for (int64_t iw = cols.lo; iw < cols.hi; ++iw) {
            store(acc + iw * L, load<Lanes>(acc + iw * L) + tap * load<Lanes>(gy_row + (iw - j + d.pad) * L));
          }
        }
      }
    }
    float* gx_row = gx + ((n * d.c + c) * d.h + ih) * d.w;
    for (int64_t iw = 0; iw < d.w; ++iw) {
      float sum = 0.0f;
      for (int64_t l = 0; l < L; ++l) sum += acc[iw * L + l];
      gx_row[iw] = sum;
    }
  }

  static torch::Tensor backward_data(const torch::Tensor& x, const torch::Tensor& weight,
                                     const torch::Tensor& grad_y5) {
    const Dims d = dims_of(x, weight);
    const torch::Tensor wl = weights_by_lane(weight, d);
    torch::Tensor grad_x = torch::empty_like(x);
    const float* wp = wl.data_ptr<float>();
    const float* gy = grad_y5.data_ptr<float>();
    float* gx = grad_x.data_ptr<float>();
    at::parallel_for(0, d.n * d.c * d.h, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> acc(d.w * L);
      for (int64_t row = begin; row < end; ++row) backward_data_row(wp, gy, gx, d, row, acc.data());
    });
    return grad_x;
  }
};

torch::Tensor forward_kernel(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                             int64_t block) {
  return block == 16 ? ConvIn<16>::forward_kernel(x, weight, bias) : ConvIn<8>::forward_kernel(x, weight, bias);
}

struct ConvNchwToBlockedFunction : public torch::autograd::Function<ConvNchwToBlockedFunction> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& weight, const torch::Tensor& bias, int64_t block) {
    ctx->save_for_backward({x, weight});
    return forward_kernel(x, weight, bias, block);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    RECORD_FUNCTION("diffuse::conv_nchw_to_blocked_backward", std::vector<c10::IValue>({grads[0]}));
    const auto saved = ctx->get_saved_variables();
    const auto grad_y5 = grads[0].contiguous();
    torch::Tensor gx, gw, gb;
    const bool by_16 = grad_y5.size(4) == 16;
    if (ctx->needs_input_grad(0)) {
      gx = by_16 ? ConvIn<16>::backward_data(saved[0], saved[1], grad_y5)
                 : ConvIn<8>::backward_data(saved[0], saved[1], grad_y5);
    }
    if (ctx->needs_input_grad(1) || ctx->needs_input_grad(2)) {
      std::tie(gw, gb) = by_16 ? ConvIn<16>::backward_weights(saved[0], saved[1], grad_y5)
                               : ConvIn<8>::backward_weights(saved[0], saved[1], grad_y5);
    }
    return {gx, ctx->needs_input_grad(1) ? gw : torch::Tensor(), ctx->needs_input_grad(2) ? gb : torch::Tensor(),
            torch::Tensor()};
  }
};

}  // namespace

torch::Tensor conv_nchw_to_blocked(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                                   int64_t block) {
  if (block == 0) block = channel_block();
  TORCH_CHECK(block == 8 || block == 16, "conv_nchw_to_blocked: the block must be 8 or 16 channels, got ", block);
  const int64_t L = block;
  TORCH_CHECK(x.dim() == 4 && x.device().is_cpu() && x.scalar_type() == torch::kFloat32,
              "conv_nchw_to_blocked: x must be a float32 [N, C, H, W] CPU tensor, got ", x.sizes());
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) % L == 0 && weight.size(1) == x.size(1) &&
                  weight.size(2) == weight.size(3) && weight.size(2) % 2 == 1 &&
                  weight.scalar_type() == torch::kFloat32,
              "conv_nchw_to_blocked: weight must be float32 [O, ", x.size(1), ", k, k] with O a multiple of ", L,
              " and k odd, got ", weight.sizes());
  TORCH_CHECK(!bias.defined() || (bias.dim() == 1 && bias.size(0) == weight.size(0)),
              "conv_nchw_to_blocked: bias must be [", weight.size(0), "]");
  const auto xc = x.contiguous(), w = weight.contiguous();
  // a missing bias travels as zeros without a gradient (autograd functions take no undefined tensors)
  const auto b = bias.defined() ? bias.contiguous() : torch::zeros({weight.size(0)}, x.options());
  if (!gradient_wanted({x, weight, bias})) return forward_kernel(xc, w, b, block);
  return ConvNchwToBlockedFunction::apply(xc, w, b, block);
}

}  // namespace diffuse
