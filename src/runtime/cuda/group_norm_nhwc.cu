// GroupNorm (+ a per-channel shift before it, + SiLU after it) for channels-last activations on
// the GPU, in one kernel: LibTorch's GroupNorm on channels-last tensors copies them to NCHW and
// back, and the time shift and the SiLU are separate passes. On an H200, a ddpm-cifar10 forward
// pass spent more time in those passes and layout copies than in its convolutions
// (docs/PERFORMANCE.md, bench/gpu_kernel_profile.py).
//
// One thread block per image. Each thread owns 8 neighbouring channels (one 16-byte load of bf16)
// and a set of rows (pixels); the block reads the image twice: once for the statistics, once to
// normalise.
//
// Statistics, for group g over its channels c and pixels p (u = x + shift):
//   per channel, sums of d = u − u_c(pixel 0) (a pivot from the data keeps the float sums well
//   conditioned when |mean| ≫ std):  mean_c = pivot_c + Σd / HW,  M2_c = Σd² − (Σd)² / HW
//   per group (Chan et al.'s parallel combination):
//   μ_g = mean over c of mean_c,  M2_g = Σ_c [M2_c + HW (mean_c − μ_g)²],  σ²_g = M2_g / (HW · C_g)
// Output: y = silu?(x · a_c + b_c) with a_c = γ_c / √(σ²_g + ε), b_c = β_c + (shift_c − μ_g) a_c.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>

#include "group_norm_nhwc_launch.h"
#include "lanes8.cuh"

namespace diffuse::cuda_kernels {

namespace {

constexpr int kThreadsPerBlock = 512; // at most; a multiple of C / 8

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// Shared memory: partial sums [rows][C] twice, then per channel mean, M2, a and b.
template <typename T>
__global__ void group_norm_nhwc_kernel(const T* __restrict__ x, T* __restrict__ y, const float* __restrict__ shift,
                                       const float* __restrict__ gamma, const float* __restrict__ beta, int hw, int c,
                                       int groups, float eps, bool silu) {
  extern __shared__ float smem[];
  const int slots = c / kLanes;           // threads across one pixel's channels
  const int rows = blockDim.x / slots;    // pixels read at once
  const int slot = threadIdx.x % slots;
  const int row0 = threadIdx.x / slots;
  const int c0 = slot * kLanes;
  const size_t image = static_cast<size_t>(blockIdx.x) * hw * c;
  const T* xn = x + image;
  T* yn = y + image;
  const float* shift_n = shift != nullptr ? shift + static_cast<size_t>(blockIdx.x) * c : nullptr;

  float sh[kLanes], pivot[kLanes], s1[kLanes], s2[kLanes];
  load8(xn + c0, pivot);  // pixel 0
#pragma unroll
  for (int i = 0; i < kLanes; ++i) {
    sh[i] = shift_n != nullptr ? shift_n[c0 + i] : 0.f;
    pivot[i] += sh[i];
    s1[i] = 0.f;
    s2[i] = 0.f;
  }
  for (int p = row0; p < hw; p += rows) {
    float v[kLanes];
    load8(xn + static_cast<size_t>(p) * c + c0, v);
#pragma unroll
    for (int i = 0; i < kLanes; ++i) {
      const float d = v[i] + sh[i] - pivot[i];
      s1[i] += d;
      s2[i] = fmaf(d, d, s2[i]);
    }
  }
  float* part1 = smem;                 // [rows][c]
  float* part2 = smem + rows * c;      // [rows][c]
  float* mean_c = smem + 2 * rows * c; // [c]
  float* m2_c = mean_c + c;            // [c]
  float* coef_a = m2_c + c;            // [c]
  float* coef_b = coef_a + c;          // [c]
#pragma unroll
  for (int i = 0; i < kLanes; ++i) {
    part1[row0 * c + c0 + i] = s1[i];
    part2[row0 * c + c0 + i] = s2[i];
  }
  __syncthreads();

  const float n_pixels = static_cast<float>(hw);
  for (int ch = threadIdx.x; ch < c; ch += blockDim.x) {
    float a = 0.f, b = 0.f;
    for (int r = 0; r < rows; ++r) {
      a += part1[r * c + ch];
      b += part2[r * c + ch];
    }
    const float pivot_ch = to_float(xn[ch]) + (shift_n != nullptr ? shift_n[ch] : 0.f);
    mean_c[ch] = pivot_ch + a / n_pixels;
    m2_c[ch] = fmaxf(b - a * a / n_pixels, 0.f);
  }
  __syncthreads();

  const int per_group = c / groups;
  for (int g = threadIdx.x; g < groups; g += blockDim.x) {
    const int first = g * per_group;
    float mu = 0.f;
    for (int k = 0; k < per_group; ++k) mu += mean_c[first + k];
    mu /= static_cast<float>(per_group);
    float m2 = 0.f;
    for (int k = 0; k < per_group; ++k) {
      const float d = mean_c[first + k] - mu;
      m2 += m2_c[first + k] + n_pixels * d * d;
    }
    const float rstd = rsqrtf(m2 / (n_pixels * static_cast<float>(per_group)) + eps);
    for (int k = 0; k < per_group; ++k) {
      const int ch = first + k;
      coef_a[ch] = rstd * gamma[ch];
      coef_b[ch] = beta[ch] - mu * coef_a[ch];
    }
  }
  __syncthreads();

  float a8[kLanes], b8[kLanes];
#pragma unroll
  for (int i = 0; i < kLanes; ++i) {
    a8[i] = coef_a[c0 + i];
    b8[i] = fmaf(sh[i], a8[i], coef_b[c0 + i]);
  }
  for (int p = row0; p < hw; p += rows) {
    float v[kLanes];
    load8(xn + static_cast<size_t>(p) * c + c0, v);
#pragma unroll
    for (int i = 0; i < kLanes; ++i) {
      const float u = fmaf(v[i], a8[i], b8[i]);
      v[i] = silu ? u / (1.f + __expf(-u)) : u;  // SiLU(u) = u · sigmoid(u)
    }
    store8(yn + static_cast<size_t>(p) * c + c0, v);
  }
}

}  // namespace

int group_norm_nhwc(const void* x, void* y, bool bf16, const float* shift, const float* gamma, const float* beta,
                    int n, int hw, int c, int groups, float eps, bool silu, void* stream) {
  if (n < 1 || hw < 1 || c < kLanes || c % kLanes != 0 || c > 1024 || groups < 1 || c % groups != 0) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  const int slots = c / kLanes;
  const int rows = slots >= kThreadsPerBlock ? 1 : kThreadsPerBlock / slots;
  const int threads = slots * rows;
  const size_t shared = (2 * static_cast<size_t>(rows) * c + 4 * static_cast<size_t>(c)) * sizeof(float);
  auto s = static_cast<cudaStream_t>(stream);
  if (bf16) {
    group_norm_nhwc_kernel<__nv_bfloat16><<<n, threads, shared, s>>>(
        static_cast<const __nv_bfloat16*>(x), static_cast<__nv_bfloat16*>(y), shift, gamma, beta, hw, c, groups, eps,
        silu);
  } else {
    group_norm_nhwc_kernel<float><<<n, threads, shared, s>>>(static_cast<const float*>(x), static_cast<float*>(y),
                                                             shift, gamma, beta, hw, c, groups, eps, silu);
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace diffuse::cuda_kernels
