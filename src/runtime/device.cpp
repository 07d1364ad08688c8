#include "diffuse/runtime/device.h"

#include <dlfcn.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <sys/resource.h>

#include <cstdlib>
#include <limits>
#include <stdexcept>

#include "diffuse_build_config.h"

#include <ATen/autocast_mode.h>

#if DIFFUSE_HAVE_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace diffuse {

void synchronize(torch::Device device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.has_index() ? device.index() : -1);
}

int64_t peak_memory_bytes(torch::Device device) {
#if DIFFUSE_HAVE_CUDA
  if (device.is_cuda()) {
    const auto index = device.has_index() ? device.index() : c10::cuda::current_device();
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(index);
    return stats.allocated_bytes[0].peak;  // [0]: StatType::AGGREGATE (the enum's namespace moved in LibTorch 2.5)
  }
#endif
  if (device.is_cuda()) return -1;
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<int64_t>(usage.ru_maxrss) * 1024;  // Linux reports kilobytes
}

void reset_peak_memory(torch::Device device) {
#if DIFFUSE_HAVE_CUDA
  if (device.is_cuda()) {
    c10::cuda::CUDACachingAllocator::resetPeakStats(device.has_index() ? device.index() : c10::cuda::current_device());
  }
#endif
}

bool cuda_graphs_available() { return DIFFUSE_HAVE_CUDA && torch::cuda::is_available(); }

#if DIFFUSE_HAVE_CUDA
struct CudaGraphRunner::Impl {
  std::function<torch::Tensor(const torch::Tensor&)> f;
  std::unique_ptr<at::cuda::CUDAGraph> graph;
  torch::Tensor input, output;
};

CudaGraphRunner::CudaGraphRunner(std::function<torch::Tensor(const torch::Tensor&)> f) : impl_(new Impl) {
  if (!cuda_graphs_available()) throw std::runtime_error("CUDA graphs need a CUDA build of LibTorch and a GPU");
  impl_->f = std::move(f);
}

torch::Tensor CudaGraphRunner::operator()(const torch::Tensor& x) {
  auto& s = *impl_;
  TORCH_CHECK(x.is_cuda(), "CudaGraphRunner: the input must be on the GPU");
  if (!s.graph || !s.input.sizes().equals(x.sizes()) || s.input.scalar_type() != x.scalar_type()) {
    s.input = x.clone();
    // Autocast's cache of cast weights must not outlive the capture (it would point into the graph's pool).
    const bool cache = at::autocast::is_autocast_cache_enabled();
    at::autocast::set_autocast_cache_enabled(false);
    auto side = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, x.device().index());
    torch::cuda::synchronize();
    {
      c10::cuda::CUDAStreamGuard guard(side);
      s.f(s.input);  // warm-up: lazy initialisation (cuDNN/cuBLAS handles, kernel choice) outside the capture
    }
    torch::cuda::synchronize();
    s.graph = std::make_unique<at::cuda::CUDAGraph>();
    {
      c10::cuda::CUDAStreamGuard guard(side);
      s.graph->capture_begin();
      s.output = s.f(s.input);
      s.graph->capture_end();
    }
    torch::cuda::synchronize();
    at::autocast::set_autocast_cache_enabled(cache);
  }
  s.input.copy_(x);
  s.graph->replay();
  return s.output.clone();
}
#else
struct CudaGraphRunner::Impl {};

CudaGraphRunner::CudaGraphRunner(std::function<torch::Tensor(const torch::Tensor&)>) {
  throw std::runtime_error("CUDA graphs need a CUDA build of LibTorch (this one is CPU only)");
}

torch::Tensor CudaGraphRunner::operator()(const torch::Tensor&) {
  throw std::runtime_error("CUDA graphs need a CUDA build of LibTorch");
}
#endif

CudaGraphRunner::~CudaGraphRunner() = default;

bool use_single_threaded_blas() {
  if (std::getenv("OPENBLAS_NUM_THREADS") != nullptr) return false;  // the user's choice stands
  using SetThreads = void (*)(int);
  auto set_threads = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  if (set_threads == nullptr) return false;  // another BLAS, or none
  set_threads(1);
  return true;
}

bool keep_freed_memory_for_reuse() {
#if defined(__GLIBC__)
  for (const char* name : {"GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"}) {
    if (const char* v = std::getenv(name); v != nullptr && *v != '\0') return false;  // the user's choice stands
  }
  // Blocks up to 32 MiB (glibc's largest mmap threshold on 64-bit) come from the heap, and the
  // heap's free top is kept up to 2 GiB instead of returned to the kernel.
  const bool mmap_set = mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024) == 1;
  const bool trim_set = mallopt(M_TRIM_THRESHOLD, std::numeric_limits<int>::max()) == 1;
  return mmap_set && trim_set;
#else
  return false;
#endif
}

}  // namespace diffuse
