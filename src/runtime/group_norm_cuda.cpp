#include "diffuse/runtime/group_norm_cuda.h"
#include "diffuse/runtime/settings.h"

#include <cstdint>
#include <stdexcept>

#include "diffuse/runtime/gradient_wanted.h"
#include "cuda_tensor_checks.h"
#include "diffuse_build_config.h"

#if DIFFUSE_HAVE_CUDA_KERNELS
#include <c10/cuda/CUDAStream.h>

#include "cuda/group_norm_nhwc_launch.h"
#endif

namespace diffuse {

bool cuda_group_norm_built() { return DIFFUSE_HAVE_CUDA_KERNELS; }

bool cuda_group_norm_applies(const torch::Tensor& x, const torch::Tensor& gamma, const torch::Tensor& beta,
                             const torch::Tensor& shift, int64_t groups) {
  if (!cuda_group_norm_built() || !x.is_cuda() || x.dim() != 4 || !gamma.defined() || !beta.defined()) return false;
  if (!runtime_settings().cuda_group_norm) return false;
  if (!nhwc_lanes8_tensor(x)) return false;
  const int64_t c = x.size(1);
  if (c % 8 != 0 || c > 1024 || groups < 1 || c % groups != 0) return false;
  if (x.size(0) > INT32_MAX || x.size(2) * x.size(3) > INT32_MAX) return false;
  return !gradient_wanted({x, gamma, beta, shift});
}

torch::Tensor group_norm_cuda(const torch::Tensor& x, const torch::Tensor& shift, const torch::Tensor& gamma,
                              const torch::Tensor& beta, int64_t groups, double eps, bool silu) {
  if (!cuda_group_norm_applies(x, gamma, beta, shift, groups)) {
    throw std::invalid_argument("group_norm_cuda: expected a channels-last float32 or bf16 CUDA tensor with channels a "
                                "multiple of 8 (at most 1024) that split into the groups, and no gradient");
  }
#if DIFFUSE_HAVE_CUDA_KERNELS
  const int64_t n = x.size(0), c = x.size(1), hw = x.size(2) * x.size(3);
  TORCH_CHECK(gamma.numel() == c && beta.numel() == c, "group_norm_cuda: γ and β need ", c, " elements");
  TORCH_CHECK(!shift.defined() || (shift.dim() == 2 && shift.size(0) == n && shift.size(1) == c),
              "group_norm_cuda: shift must be [", n, ", ", c, "], got ", shift.sizes());
  auto as_float = [&](const torch::Tensor& t) { return t.to(x.device(), torch::kFloat32).contiguous(); };
  const auto g = as_float(gamma), b = as_float(beta);
  const auto s = shift.defined() ? as_float(shift) : torch::Tensor();
  auto y = torch::empty_like(x, c10::MemoryFormat::ChannelsLast);
  const auto stream = c10::cuda::getCurrentCUDAStream(x.device().index());
  const int status = cuda_kernels::group_norm_nhwc(
      x.data_ptr(), y.data_ptr(), x.scalar_type() == torch::kBFloat16, s.defined() ? s.data_ptr<float>() : nullptr,
      g.data_ptr<float>(), b.data_ptr<float>(), static_cast<int>(n), static_cast<int>(hw), static_cast<int>(c),
      static_cast<int>(groups), static_cast<float>(eps), silu, static_cast<void*>(stream.stream()));
  TORCH_CHECK(status == 0, "group_norm_cuda: the kernel launch failed (CUDA error ", status, ")");
  return y;
#else
  (void)eps;
  (void)silu;
  throw std::logic_error("group_norm_cuda: not built");
#endif
}

}  // namespace diffuse
