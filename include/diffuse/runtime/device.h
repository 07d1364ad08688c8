// What differs between the CPU and a CUDA device for timing and replay: waiting for the device,
// peak memory, and CUDA graphs (one launch for a whole fixed-shape computation).
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <vector>

namespace diffuse {

// Waits until the device has finished all queued work (no-op on the CPU).
void synchronize(torch::Device device);

// A CPU tensor (random numbers from a CPU generator, say) copied to `device` without making the
// host wait: to a GPU through pinned memory and an asynchronous copy, where a copy from pageable
// memory waits for all the work queued before it (once a step, that keeps the host from running
// ahead of the GPU). Elsewhere simply `.to(device)`.
torch::Tensor to_device_async(const torch::Tensor& cpu, torch::Device device);

// CUDA: peak bytes allocated by torch's caching allocator since the last reset. CPU: the peak
// resident set of the whole process (which cannot be reset; reset is a no-op there).
int64_t peak_memory_bytes(torch::Device device);
void reset_peak_memory(torch::Device device);

// True when this build has CUDA and a GPU is present.
bool cuda_graphs_available();

// Keeps OpenBLAS to the calling thread (openblas_set_num_threads(1), where that library is loaded
// and OPENBLAS_NUM_THREADS is not set). LibTorch already spreads work over its OpenMP threads;
// OpenBLAS's own thread pool competes with them for the same cores (docs/PERFORMANCE.md).
// Returns whether it changed anything.
bool use_single_threaded_blas();

// Keeps freed memory in the process for the next tensor of that size (glibc: M_MMAP_THRESHOLD
// 32 MiB, M_TRIM_THRESHOLD 2 GiB), unless GLIBC_TUNABLES or a MALLOC_*_ variable sets malloc's
// behaviour already. By default glibc hands large blocks back to the kernel on free, and the next
// step's tensors page-fault their memory in again, 4 KiB at a time (docs/PERFORMANCE.md). The
// cost: the process keeps its peak heap.
// Returns whether it changed anything (false on other C libraries).
bool keep_freed_memory_for_reuse();

// Runs f(inputs) for fixed input shapes as a CUDA graph: captured on first use (after one warm-up
// run on a side stream), then replayed with the new inputs copied into the captured ones; inputs
// of other sizes or dtypes, or an input defined where it was undefined, capture it again. f must
// not synchronise with the host (no .item(), no host-side randomness). The result is a copy.
// Without CUDA, constructing one throws.
class CudaGraphRunner {
 public:
  using Function = std::function<torch::Tensor(const std::vector<torch::Tensor>&)>;
  explicit CudaGraphRunner(Function f);
  explicit CudaGraphRunner(std::function<torch::Tensor(const torch::Tensor&)> f);  // one input
  ~CudaGraphRunner();
  torch::Tensor operator()(const std::vector<torch::Tensor>& inputs);
  torch::Tensor operator()(const torch::Tensor& x) { return (*this)(std::vector<torch::Tensor>{x}); }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace diffuse
