#include "diffuse/runtime/winograd_conv.h"

#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <vector>

#include "diffuse/runtime/blocked_layout.h"
#include "lanes.h"

namespace diffuse {

namespace {

using lanes::load;
using lanes::store;

constexpr int64_t kTile = 4;   // output pixels per tile side: F(4×4, 3×3)
constexpr int64_t kPatch = 6;  // input pixels per patch side: 4 + 3 − 1
constexpr int64_t kPoints = kPatch * kPatch;

// The weights' transform G (6×3) of F(4×4, 3×3) with interpolation points 0, ±1, ±2 and ∞.
constexpr float kG[6][3] = {{1.0f / 4, 0, 0},
                            {-1.0f / 6, -1.0f / 6, -1.0f / 6},
                            {-1.0f / 6, 1.0f / 6, -1.0f / 6},
                            {1.0f / 24, 1.0f / 12, 1.0f / 6},
                            {1.0f / 24, -1.0f / 12, 1.0f / 6},
                            {0, 0, 1}};

// Tiles per group: a group's transformed patches V [36, tiles, C] and products M [36, tiles, O] are
// computed, multiplied and transformed back while they are in the core's caches (110 KiB for V at
// 12 tiles of 64 channels), instead of whole-batch tensors written out and read back.
constexpr int64_t kGroup = 12;
// Rows of a product block: 6 rows of 2 vectors are 12 sums in registers, of AVX2's 16.
constexpr int64_t kProductRows = 6;

// Tiles of an image batch: tile t is image t / (rows · cols), tile row (t / cols) % rows, column t % cols.
struct Tiles {
  int64_t n, h, w, rows, cols;
  Tiles(int64_t images, int64_t height, int64_t width)
      : n(images), h(height), w(width), rows((height + kTile - 1) / kTile), cols((width + kTile - 1) / kTile) {}
  int64_t count() const { return n * rows * cols; }
};

// The transforms and passes on channel blocks of L lanes.
template <int64_t L>
struct Winograd {
  using Lanes = typename lanes::Of<L>::Floats;

  // Bᵀ applied to six values (a column or a row of a 6×6 patch):
  //   Bᵀ = [4 0 −5 0 1 0; 0 −4 −4 1 1 0; 0 4 −4 −1 1 0; 0 −2 −1 2 1 0; 0 2 −1 −2 1 0; 0 4 0 −5 0 1]
  static DIFFUSE_LANE_HELPER void apply_bt(const Lanes d[6], Lanes out[6]) {
    out[0] = 4.0f * d[0] - 5.0f * d[2] + d[4];
    out[1] = -4.0f * d[1] - 4.0f * d[2] + d[3] + d[4];
    out[2] = 4.0f * d[1] - 4.0f * d[2] - d[3] + d[4];
    out[3] = -2.0f * d[1] - d[2] + 2.0f * d[3] + d[4];
    out[4] = 2.0f * d[1] - d[2] - 2.0f * d[3] + d[4];
    out[5] = 4.0f * d[1] - 5.0f * d[3] + d[5];
  }

  // Aᵀ applied to six values: Aᵀ = [1 1 1 1 1 0; 0 1 −1 2 −2 0; 0 1 1 4 4 0; 0 1 −1 8 −8 1]
  static DIFFUSE_LANE_HELPER void apply_at(const Lanes m[6], Lanes out[4]) {
    const Lanes a = m[1] + m[2], b = m[1] - m[2], c = m[3] + m[4], e = m[3] - m[4];
    out[0] = m[0] + a + c;
    out[1] = b + 2.0f * e;
    out[2] = a + 4.0f * c;
    out[3] = b + 8.0f * e + m[5];
  }

  // A (= (Aᵀ)ᵀ, 6×4) applied to four values: the backward of apply_at.
  static DIFFUSE_LANE_HELPER void apply_a(const Lanes d[4], Lanes out[6]) {
    out[0] = d[0];
    out[1] = d[0] + d[1] + d[2] + d[3];
    out[2] = d[0] - d[1] + d[2] - d[3];
    out[3] = d[0] + 2.0f * d[1] + 4.0f * d[2] + 8.0f * d[3];
    out[4] = d[0] - 2.0f * d[1] + 4.0f * d[2] - 8.0f * d[3];
    out[5] = d[3];
  }

  // c[i][o] (+)= Σ_k a[i·a_row + k·a_k] · b[k·cols + o] for the R rows i and the J·L columns o of one
  // block, c's rows `cols` apart: R·J vectors of sums stay in registers over the whole depth.
  template <int64_t R, int64_t J>
  static DIFFUSE_LANE_HELPER void product_block(const float* a, int64_t a_row, int64_t a_k, const float* b,
                                                int64_t depth, int64_t cols, float* c, bool accumulate) {
    Lanes sums[R][J];
    for (int64_t r = 0; r < R; ++r) {
      for (int64_t j = 0; j < J; ++j) sums[r][j] = accumulate ? load<Lanes>(c + r * cols + j * L) : Lanes{};
    }
    for (int64_t k = 0; k < depth; ++k) {
      Lanes row[J];
      for (int64_t j = 0; j < J; ++j) row[j] = load<Lanes>(b + k * cols + j * L);
      for (int64_t r = 0; r < R; ++r) {
        const Lanes ark = lanes::splat<Lanes>(a[r * a_row + k * a_k]);
        for (int64_t j = 0; j < J; ++j) sums[r][j] += ark * row[j];
      }
    }
    for (int64_t r = 0; r < R; ++r) {
      for (int64_t j = 0; j < J; ++j) store(c + r * cols + j * L, sums[r][j]);
    }
  }

  template <int64_t J>
  static DIFFUSE_LANE_HELPER void product_rows(int64_t rows, const float* a, int64_t a_row, int64_t a_k, const float* b,
                                               int64_t depth, int64_t cols, float* c, bool accumulate) {
    switch (rows) {
      case 1:
        return product_block<1, J>(a, a_row, a_k, b, depth, cols, c, accumulate);
      case 2:
        return product_block<2, J>(a, a_row, a_k, b, depth, cols, c, accumulate);
      case 3:
        return product_block<3, J>(a, a_row, a_k, b, depth, cols, c, accumulate);
      case 4:
        return product_block<4, J>(a, a_row, a_k, b, depth, cols, c, accumulate);
      case 5:
        return product_block<5, J>(a, a_row, a_k, b, depth, cols, c, accumulate);
      default:
        return product_block<kProductRows, J>(a, a_row, a_k, b, depth, cols, c, accumulate);
    }
  }

  // The 36 products of a group: c[p] (+)= a[p] · b[p] for p < 36, a[p] [rows × depth] (elements
  // a_row and a_k apart, so that a transposed V is read in place), b[p] [depth × cols], c[p]
  // [rows × cols], each of a, b, c the next p one whole matrix further. cols is a multiple of L.
  static DIFFUSE_LANE_LOOP void products(const float* a, int64_t a_row, int64_t a_k, const float* b, int64_t rows,
                                         int64_t depth, int64_t cols, float* c, bool accumulate) {
    for (int64_t p = 0; p < kPoints; ++p) {
      const float* ap = a + p * rows * depth;
      const float* bp = b + p * depth * cols;
      float* cp = c + p * rows * cols;
      for (int64_t i = 0; i < rows; i += kProductRows) {
        const int64_t n = std::min(kProductRows, rows - i);
        int64_t o = 0;
        for (; o + 2 * L <= cols; o += 2 * L) {
          product_rows<2>(n, ap + i * a_row, a_row, a_k, bp + o, depth, cols, cp + i * cols + o, accumulate);
        }
        if (o < cols)
          product_rows<1>(n, ap + i * a_row, a_row, a_k, bp + o, depth, cols, cp + i * cols + o, accumulate);
      }
    }
  }

  // For the group of tiles [begin, end): V[p][t − begin][block·L + l] = (Bᵀ d B)[p] of the 6×6 patch d
  // around tile t (zero outside the image), for each of the `blocks` channel blocks of x5 ([N, C/L, H, W, L]).
  static DIFFUSE_LANE_LOOP void input_transform(const float* x5, const Tiles& s, int64_t blocks, int64_t begin,
                                                int64_t end, float* v) {
    const int64_t channels = blocks * L, tiles = end - begin;
    for (int64_t t = begin; t < end; ++t) {
      const int64_t image = t / (s.rows * s.cols), y0 = (t / s.cols) % s.rows * kTile - 1, x0 = t % s.cols * kTile - 1;
      for (int64_t cb = 0; cb < blocks; ++cb) {
        const float* plane = x5 + (image * blocks + cb) * s.h * s.w * L;
        Lanes cols[kPoints];  // Bᵀ d: each column of d transformed
        for (int64_t k = 0; k < kPatch; ++k) {
          Lanes d[kPatch];
          const int64_t x = x0 + k;
          for (int64_t r = 0; r < kPatch; ++r) {
            const int64_t y = y0 + r;
            d[r] = y >= 0 && y < s.h && x >= 0 && x < s.w ? load<Lanes>(plane + (y * s.w + x) * L) : Lanes{};
          }
          Lanes out[kPatch];
          apply_bt(d, out);
          for (int64_t r = 0; r < kPatch; ++r) cols[r * kPatch + k] = out[r];
        }
        for (int64_t r = 0; r < kPatch; ++r) {  // then (Bᵀ d) B: each row
          Lanes out[kPatch];
          apply_bt(cols + r * kPatch, out);
          for (int64_t k = 0; k < kPatch; ++k) {
            store(v + ((r * kPatch + k) * tiles + t - begin) * channels + cb * L, out[k]);
          }
        }
      }
    }
  }

  // For the group of tiles [begin, end): the 4×4 output pixels Aᵀ m A + bias of tile t from
  // m = M[·][t − begin][o] (M: [36, end − begin, O]), into y5 ([N, O/L, H, W, L]; pixels outside the
  // image dropped).
  static DIFFUSE_LANE_LOOP void output_transform(const float* m, const float* bias, const Tiles& s, int64_t blocks,
                                                 int64_t begin, int64_t end, float* y5) {
    const int64_t channels = blocks * L, tiles = end - begin;
    for (int64_t t = begin; t < end; ++t) {
      const int64_t image = t / (s.rows * s.cols), y0 = (t / s.cols) % s.rows * kTile, x0 = t % s.cols * kTile;
      for (int64_t ob = 0; ob < blocks; ++ob) {
        Lanes rows[kTile * kPatch];  // Aᵀ m: 4 rows of 6
        for (int64_t k = 0; k < kPatch; ++k) {
          Lanes col[kPatch], out[kTile];
          for (int64_t r = 0; r < kPatch; ++r)
            col[r] = load<Lanes>(m + ((r * kPatch + k) * tiles + t - begin) * channels + ob * L);
          apply_at(col, out);
          for (int64_t r = 0; r < kTile; ++r) rows[r * kPatch + k] = out[r];
        }
        const Lanes b = bias ? load<Lanes>(bias + ob * L) : Lanes{};
        float* plane = y5 + (image * blocks + ob) * s.h * s.w * L;
        for (int64_t r = 0; r < kTile && y0 + r < s.h; ++r) {
          Lanes out[kTile];
          apply_at(rows + r * kPatch, out);
          for (int64_t k = 0; k < kTile && x0 + k < s.w; ++k) store(plane + ((y0 + r) * s.w + x0 + k) * L, out[k] + b);
        }
      }
    }
  }

  // For the group of tiles [begin, end): Q[p][t − begin][o] = (A g Aᵀ)[p] of the 4×4 gradient tile g
  // of ∂L/∂y (zero outside the image): ∂L/∂m of output_transform.
  static DIFFUSE_LANE_LOOP void gradient_transform(const float* g5, const Tiles& s, int64_t blocks, int64_t begin,
                                                   int64_t end, float* q) {
    const int64_t channels = blocks * L, tiles = end - begin;
    for (int64_t t = begin; t < end; ++t) {
      const int64_t image = t / (s.rows * s.cols), y0 = (t / s.cols) % s.rows * kTile, x0 = t % s.cols * kTile;
      for (int64_t ob = 0; ob < blocks; ++ob) {
        const float* plane = g5 + (image * blocks + ob) * s.h * s.w * L;
        Lanes cols[kPatch * kTile];  // A g: 6 rows of 4
        for (int64_t k = 0; k < kTile; ++k) {
          Lanes d[kTile], out[kPatch];
          const int64_t x = x0 + k;
          for (int64_t r = 0; r < kTile; ++r) {
            const int64_t y = y0 + r;
            d[r] = y < s.h && x < s.w ? load<Lanes>(plane + (y * s.w + x) * L) : Lanes{};
          }
          apply_a(d, out);
          for (int64_t r = 0; r < kPatch; ++r) cols[r * kTile + k] = out[r];
        }
        for (int64_t r = 0; r < kPatch; ++r) {
          Lanes out[kPatch];
          apply_a(cols + r * kTile, out);
          for (int64_t k = 0; k < kPatch; ++k) {
            store(q + ((r * kPatch + k) * tiles + t - begin) * channels + ob * L, out[k]);
          }
        }
      }
    }
  }

  // U[p][c][o] = (G g Gᵀ)[p] for input channels [begin, end), from the weights laid out [C][9][O]
  // (L output channels per vector).
  static DIFFUSE_LANE_LOOP void weight_transform(const float* w_c9o, int64_t c_total, int64_t o_total, int64_t begin,
                                                 int64_t end, float* u) {
    for (int64_t c = begin; c < end; ++c) {
      for (int64_t o = 0; o < o_total; o += L) {
        Lanes g[9], t[6 * 3];
        for (int64_t k = 0; k < 9; ++k) g[k] = load<Lanes>(w_c9o + (c * 9 + k) * o_total + o);
        for (int64_t i = 0; i < 6; ++i) {  // t = G g
          for (int64_t j = 0; j < 3; ++j) t[i * 3 + j] = kG[i][0] * g[j] + kG[i][1] * g[3 + j] + kG[i][2] * g[6 + j];
        }
        for (int64_t i = 0; i < 6; ++i) {  // U = t Gᵀ
          for (int64_t j = 0; j < 6; ++j) {
            store(u + ((i * 6 + j) * c_total + c) * o_total + o,
                  t[i * 3] * kG[j][0] + t[i * 3 + 1] * kG[j][1] + t[i * 3 + 2] * kG[j][2]);
          }
        }
      }
    }
  }

  // ∂L/∂g [C][9][O] = Gᵀ ∂L/∂U G for input channels [begin, end), from dU [36][C][O].
  static DIFFUSE_LANE_LOOP void weight_transform_backward(const float* du, int64_t c_total, int64_t o_total,
                                                          int64_t begin, int64_t end, float* dw_c9o) {
    for (int64_t c = begin; c < end; ++c) {
      for (int64_t o = 0; o < o_total; o += L) {
        Lanes s[3 * 6] = {};  // s = Gᵀ dU
        for (int64_t i = 0; i < 6; ++i) {
          for (int64_t j = 0; j < 6; ++j) {
            const Lanes d = load<Lanes>(du + ((i * 6 + j) * c_total + c) * o_total + o);
            for (int64_t a = 0; a < 3; ++a) s[a * 6 + j] += kG[i][a] * d;
          }
        }
        for (int64_t a = 0; a < 3; ++a) {  // ∂L/∂g = s G
          for (int64_t b = 0; b < 3; ++b) {
            Lanes sum{};
            for (int64_t j = 0; j < 6; ++j) sum += s[a * 6 + j] * kG[j][b];
            store(dw_c9o + (c * 9 + a * 3 + b) * o_total + o, sum);
          }
        }
      }
    }
  }

  // ∂L/∂b for the L channels of block `ob`: Σ over images and pixels of the blocked ∂L/∂y, float
  // sums over runs of 64 pixels added up in double (LibTorch's float64 `sum` is many times slower
  // than its float32 one, and float32 alone loses digits over a whole batch).
  static DIFFUSE_LANE_LOOP void bias_gradient(const float* g5, int64_t images, int64_t blocks, int64_t pixels,
                                              int64_t ob, float* grad_bias) {
    double total[L] = {};
    for (int64_t image = 0; image < images; ++image) {
      const float* plane = g5 + (image * blocks + ob) * pixels * L;
      for (int64_t p0 = 0; p0 < pixels; p0 += 64) {
        Lanes run{};
        for (int64_t p = p0; p < std::min(pixels, p0 + 64); ++p) run += load<Lanes>(plane + p * L);
        for (int64_t l = 0; l < L; ++l) total[l] += run[l];
      }
    }
    for (int64_t l = 0; l < L; ++l) grad_bias[ob * L + l] = static_cast<float>(total[l]);
  }

  // U: [36, C, O] from weight [O, C, 3, 3].
  static torch::Tensor transformed_weights(const torch::Tensor& weight) {
    const int64_t o = weight.size(0), c = weight.size(1);
    const auto w_c9o = weight.permute({1, 2, 3, 0}).contiguous();
    torch::Tensor u = torch::empty({kPoints, c, o}, weight.options());
    at::parallel_for(0, c, 4, [&](int64_t begin, int64_t end) {
      weight_transform(w_c9o.data_ptr<float>(), c, o, begin, end, u.data_ptr<float>());
    });
    return u;
  }

  // The convolution for blocked x5 (checked by the caller), a group of tiles at a time:
  // V = Bᵀ d B of the group's patches, M[p] = V[p] · U[p] (the sum over input channels), y = Aᵀ M A + b.
  static torch::Tensor forward(const torch::Tensor& x5_in, const torch::Tensor& weight_in,
                               const torch::Tensor& bias_in) {
    RECORD_FUNCTION("diffuse::winograd_conv", std::vector<c10::IValue>({x5_in}));
    const auto x5 = x5_in.contiguous();
    const auto weight = weight_in.detach();
    const int64_t o = weight.size(0), c = weight.size(1), in_blocks = x5.size(1), out_blocks = o / L;
    const Tiles s(x5.size(0), x5.size(2), x5.size(3));
    const auto u = transformed_weights(weight);  // U: [36, C, O]
    torch::Tensor y5 = torch::empty({s.n, out_blocks, s.h, s.w, L}, x5.options());
    const auto bias = bias_in.defined() ? bias_in.detach().contiguous() : torch::Tensor();
    const float* bias_data = bias.defined() ? bias.data_ptr<float>() : nullptr;
    at::parallel_for(0, s.count(), kGroup, [&](int64_t begin, int64_t end) {
      std::vector<float> v(kPoints * kGroup * c), m(kPoints * kGroup * o);
      for (int64_t first = begin; first < end; first += kGroup) {
        const int64_t last = std::min(end, first + kGroup), tiles = last - first;
        input_transform(x5.data_ptr<float>(), s, in_blocks, first, last, v.data());
        products(v.data(), c, 1, u.data_ptr<float>(), tiles, c, o, m.data(), /*accumulate=*/false);
        output_transform(m.data(), bias_data, s, out_blocks, first, last, y5.data_ptr<float>());
      }
    });
    return y5;
  }

  // ∂L/∂W and ∂L/∂b (checked by the caller): ∂L/∂U[p] = Σ_groups V[p]ᵀ · Q[p] with Q = A ∂L/∂y Aᵀ of
  // the group's gradient tiles, each thread summing its own share of the tiles, then the shares added.
  static std::pair<torch::Tensor, torch::Tensor> backward_weights(const torch::Tensor& x5_in,
                                                                  const torch::Tensor& grad_y5_in) {
    RECORD_FUNCTION("diffuse::winograd_conv_backward_weights", std::vector<c10::IValue>({grad_y5_in}));
    const auto x5 = x5_in.contiguous(), grad_y5 = grad_y5_in.contiguous();
    const int64_t in_blocks = x5.size(1), c = in_blocks * L, out_blocks = grad_y5.size(1), o = out_blocks * L;
    const Tiles s(x5.size(0), x5.size(2), x5.size(3));
    const int64_t groups = (s.count() + kGroup - 1) / kGroup;
    const int64_t shares = std::clamp<int64_t>(at::get_num_threads(), 1, groups);
    const int64_t groups_per_share = (groups + shares - 1) / shares;
    torch::Tensor du_shares = torch::zeros({shares, kPoints, c, o}, x5.options());
    float* const du_share_data = du_shares.data_ptr<float>();
    at::parallel_for(0, shares, 1, [&](int64_t share_begin, int64_t share_end) {
      std::vector<float> v(kPoints * kGroup * c), q(kPoints * kGroup * o);
      for (int64_t share = share_begin; share < share_end; ++share) {
        const int64_t share_last = std::min(s.count(), (share + 1) * groups_per_share * kGroup);
        for (int64_t first = share * groups_per_share * kGroup; first < share_last; first += kGroup) {
          const int64_t last = std::min(share_last, first + kGroup), tiles = last - first;
          input_transform(x5.data_ptr<float>(), s, in_blocks, first, last, v.data());
          gradient_transform(grad_y5.data_ptr<float>(), s, out_blocks, first, last, q.data());
          // ∂L/∂U[p] += V[p]ᵀ · Q[p]: V[p] read transposed (rows c, depth the tiles)
          products(v.data(), 1, c, q.data(), c, tiles, o, du_share_data + share * kPoints * c * o, /*accumulate=*/true);
        }
      }
    });
    const auto du = shares == 1 ? du_shares[0] : du_shares.sum(0);  // [36, C, O]
    torch::Tensor dw_c9o = torch::empty({c, 9, o}, x5.options());
    at::parallel_for(0, c, 4, [&](int64_t begin, int64_t end) {
      weight_transform_backward(du.data_ptr<float>(), c, o, begin, end, dw_c9o.data_ptr<float>());
    });
    auto grad_weight = dw_c9o.permute({2, 0, 1}).reshape({o, c, 3, 3}).contiguous();
    torch::Tensor grad_bias = torch::empty({o}, x5.options());  // ∂L/∂b = Σ_{n,h,w} ∂L/∂y
    at::parallel_for(0, out_blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t ob = begin; ob < end; ++ob) {
        bias_gradient(grad_y5.data_ptr<float>(), s.n, out_blocks, s.h * s.w, ob, grad_bias.data_ptr<float>());
      }
    });
    return {grad_weight, grad_bias};
  }
};

}  // namespace

torch::Tensor winograd_conv3x3_blocked(const torch::Tensor& x5, const torch::Tensor& weight,
                                       const torch::Tensor& bias) {
  check_blocked_float32("winograd_conv3x3_blocked", "x", x5);
  const int64_t b = x5.size(4);
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == x5.size(1) * b && weight.size(2) == 3 && weight.size(3) == 3 &&
                  weight.size(0) % b == 0 && weight.scalar_type() == torch::kFloat32,
              "winograd_conv3x3_blocked: weight must be float32 [O, ", x5.size(1) * b, ", 3, 3] with O a multiple of ",
              b, ", got ", weight.sizes());
  return b == 16 ? Winograd<16>::forward(x5, weight, bias) : Winograd<8>::forward(x5, weight, bias);
}

torch::Tensor winograd_conv3x3_blocked_backward_data(const torch::Tensor& grad_y5, const torch::Tensor& weight) {
  // ∂L/∂x[c] = Σ_o ∂L/∂y[o] ⋆ rot180(w[o][c]): a forward convolution with weights [C, O, 3, 3]
  return winograd_conv3x3_blocked(grad_y5, weight.detach().flip({2, 3}).transpose(0, 1), {});
}

std::pair<torch::Tensor, torch::Tensor> winograd_conv3x3_blocked_backward_weights(const torch::Tensor& x5,
                                                                                  const torch::Tensor& grad_y5) {
  check_blocked_float32("winograd_conv3x3_blocked", "x", x5);
  check_blocked_float32("winograd_conv3x3_blocked", "∂L/∂y", grad_y5);
  TORCH_CHECK(x5.size(4) == grad_y5.size(4),
              "winograd_conv3x3_blocked: x and ∂L/∂y are blocked differently: ", x5.sizes(), " and ", grad_y5.sizes());
  return x5.size(4) == 16 ? Winograd<16>::backward_weights(x5, grad_y5) : Winograd<8>::backward_weights(x5, grad_y5);
}

}  // namespace diffuse
