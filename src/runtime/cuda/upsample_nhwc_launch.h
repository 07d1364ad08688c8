// The launcher of the hand-written CUDA nearest-neighbour upsampling (upsample_nhwc.cu), in plain
// C++ so that the LibTorch side includes neither CUDA's headers nor nvcc's:
// runtime/upsample_cuda.cpp calls it. Only built where LibTorch has CUDA and nvcc is there
// (DIFFUSE_HAVE_CUDA_KERNELS).
#pragma once

namespace diffuse::cuda_kernels {

// y[n, i, j, :] = x[n, ⌊i/2⌋, ⌊j/2⌋, :] for channels-last (NHWC) x of n × h × w pixels and y of
// n × 2h × 2w, each pixel `pixel_bytes` bytes (a multiple of 16; both 16-byte aligned).
// `stream` is a cudaStream_t. Returns a cudaError_t as int (0: launched).
int upsample_twice_nhwc(const void* x, void* y, long long n, int h, int w, int pixel_bytes, void* stream);

}  // namespace diffuse::cuda_kernels
