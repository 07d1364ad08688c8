#include "diffuse/runtime/upsample_cuda.h"
#include "diffuse/runtime/settings.h"

#include <cstdint>
#include <stdexcept>

#include "diffuse/runtime/gradient_wanted.h"
#include "cuda_tensor_checks.h"
#include "diffuse_build_config.h"

#if DIFFUSE_HAVE_CUDA_KERNELS
#include <c10/cuda/CUDAStream.h>

#include "cuda/upsample_nhwc_launch.h"
#endif

namespace diffuse {

bool cuda_upsample_twice_applies(const torch::Tensor& x) {
  if (!DIFFUSE_HAVE_CUDA_KERNELS || !x.is_cuda() || x.dim() != 4) return false;
  if (!runtime_settings().cuda_upsample) return false;
  if (!x.is_contiguous(c10::MemoryFormat::ChannelsLast) || x.numel() == 0) return false;
  if ((x.size(1) * static_cast<int64_t>(x.element_size())) % 16 != 0) return false;
  if (!aligned_16_bytes(x)) return false;
  if (x.size(2) > INT32_MAX / 2 || x.size(3) > INT32_MAX / 2) return false;
  return !gradient_wanted({x});
}

torch::Tensor upsample_twice_cuda(const torch::Tensor& x) {
  if (!cuda_upsample_twice_applies(x)) {
    throw std::invalid_argument("upsample_twice_cuda: expected a channels-last CUDA tensor whose pixels are a multiple "
                                "of 16 bytes, and no gradient");
  }
#if DIFFUSE_HAVE_CUDA_KERNELS
  auto y = torch::empty({x.size(0), x.size(1), 2 * x.size(2), 2 * x.size(3)},
                        x.options().memory_format(c10::MemoryFormat::ChannelsLast));
  const auto stream = c10::cuda::getCurrentCUDAStream(x.device().index());
  const int status = cuda_kernels::upsample_twice_nhwc(
      x.data_ptr(), y.data_ptr(), x.size(0), static_cast<int>(x.size(2)), static_cast<int>(x.size(3)),
      static_cast<int>(x.size(1) * x.element_size()), static_cast<void*>(stream.stream()));
  TORCH_CHECK(status == 0, "upsample_twice_cuda: the kernel launch failed (CUDA error ", status, ")");
  return y;
#else
  throw std::logic_error("upsample_twice_cuda: not built");
#endif
}

}  // namespace diffuse
