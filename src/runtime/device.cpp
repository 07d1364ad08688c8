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

torch::Tensor to_device_async(const torch::Tensor& cpu, torch::Device device) {
  if (!device.is_cuda() || !cpu.is_cpu()) return cpu.to(device);
  // LibTorch's pinned-memory cache keeps the block until the copy that reads it has finished
  return cpu.pin_memory().to(device, /*non_blocking=*/true);
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

CudaGraphRunner::CudaGraphRunner(std::function<torch::Tensor(const torch::Tensor&)> f)
    : CudaGraphRunner(Function([f = std::move(f)](const std::vector<torch::Tensor>& inputs) { return f(inputs.at(0)); })) {}

#if DIFFUSE_HAVE_CUDA
namespace {

// Whether `inputs` fit the tensors a graph was captured with: same count, the same ones defined,
// the same sizes and dtypes.
bool same_signature(const std::vector<torch::Tensor>& captured, const std::vector<torch::Tensor>& inputs) {
  if (captured.size() != inputs.size()) return false;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (captured[i].defined() != inputs[i].defined()) return false;
    if (!inputs[i].defined()) continue;
    if (!captured[i].sizes().equals(inputs[i].sizes()) || captured[i].scalar_type() != inputs[i].scalar_type()) {
      return false;
    }
  }
  return true;
}

}  // namespace

struct CudaGraphRunner::Impl {
  Function f;
  std::unique_ptr<at::cuda::CUDAGraph> graph;
  std::vector<torch::Tensor> inputs;  // the captured ones; each call's inputs are copied into them
  torch::Tensor output;
};

CudaGraphRunner::CudaGraphRunner(Function f) : impl_(new Impl) {
  if (!cuda_graphs_available()) throw std::runtime_error("CUDA graphs need a CUDA build of LibTorch and a GPU");
  impl_->f = std::move(f);
}

torch::Tensor CudaGraphRunner::operator()(const std::vector<torch::Tensor>& inputs) {
  auto& s = *impl_;
  int device_index = -1;
  for (const auto& x : inputs) {
    if (!x.defined()) continue;
    TORCH_CHECK(x.is_cuda(), "CudaGraphRunner: every input must be on the GPU");
    device_index = x.device().index();
  }
  TORCH_CHECK(device_index >= 0, "CudaGraphRunner: no defined input");
  if (!s.graph || !same_signature(s.inputs, inputs)) {
    s.graph.reset();  // the old graph's memory pool goes back before the new capture
    s.inputs.clear();
    for (const auto& x : inputs) s.inputs.push_back(x.defined() ? x.clone() : x);
    // Autocast's cache of cast weights must not outlive the capture (it would point into the graph's pool).
    const bool cache = at::autocast::is_autocast_cache_enabled();
    at::autocast::set_autocast_cache_enabled(false);
    auto side = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device_index);
    bool capturing = false;
    try {
      torch::cuda::synchronize();
      {
        c10::cuda::CUDAStreamGuard guard(side);
        s.f(s.inputs);  // warm-up: lazy initialisation (cuDNN/cuBLAS handles, kernel choice) outside the capture
      }
      torch::cuda::synchronize();
      s.graph = std::make_unique<at::cuda::CUDAGraph>();
      {
        c10::cuda::CUDAStreamGuard guard(side);
        s.graph->capture_begin();
        capturing = true;
        s.output = s.f(s.inputs);
        capturing = false;
        s.graph->capture_end();
      }
      torch::cuda::synchronize();
    } catch (...) {
      // f failed (out of memory, say): end the capture, so that the stream works again, and leave
      // no half-made graph behind; the caller sees f's error
      if (capturing) {
        c10::cuda::CUDAStreamGuard guard(side);
        try {
          s.graph->capture_end();
        } catch (...) {
        }
      }
      s.graph.reset();
      s.inputs.clear();
      at::autocast::set_autocast_cache_enabled(cache);
      throw;
    }
    at::autocast::set_autocast_cache_enabled(cache);
  }
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (inputs[i].defined()) s.inputs[i].copy_(inputs[i]);
  }
  s.graph->replay();
  return s.output.clone();
}
#else
struct CudaGraphRunner::Impl {};

CudaGraphRunner::CudaGraphRunner(Function) {
  throw std::runtime_error("CUDA graphs need a CUDA build of LibTorch (this one is CPU only)");
}

torch::Tensor CudaGraphRunner::operator()(const std::vector<torch::Tensor>&) {
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
