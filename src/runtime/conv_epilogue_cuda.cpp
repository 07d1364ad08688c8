#include "diffuse/runtime/conv_epilogue_cuda.h"
#include "diffuse/runtime/settings.h"

#include <stdexcept>

#include "diffuse/runtime/gradient_wanted.h"
#include "cuda_tensor_checks.h"
#include "diffuse_build_config.h"

#if DIFFUSE_HAVE_CUDA_KERNELS
#include <c10/cuda/CUDAStream.h>

#include "cuda/channel_bias_nhwc_launch.h"
#endif

namespace diffuse {

bool cuda_conv_epilogue_applies(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias) {
  if (!DIFFUSE_HAVE_CUDA_KERNELS || !x.is_cuda() || x.dim() != 4 || !bias.defined()) return false;
  if (!runtime_settings().cuda_conv_bias) return false;
  if (weight.dim() != 4 || weight.size(0) % 8 != 0) return false;
  if (!x.is_contiguous(c10::MemoryFormat::ChannelsLast)) return false;
  return !gradient_wanted({x, weight, bias});
}

torch::Tensor conv2d_bias_residual_cuda(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                                        int64_t stride, int64_t padding, const torch::Tensor& residual) {
  if (!cuda_conv_epilogue_applies(x, weight, bias)) {
    throw std::invalid_argument("conv2d_bias_residual_cuda: expected a channels-last CUDA input, a bias, output "
                                "channels a multiple of 8, and no gradient");
  }
  auto y = torch::conv2d(x, weight, /*bias=*/{}, stride, padding);
#if DIFFUSE_HAVE_CUDA_KERNELS
  if (nhwc_lanes8_tensor(y)) {
    const bool fuse_residual = residual.defined() && residual.sizes() == y.sizes() &&
                               residual.scalar_type() == y.scalar_type() && residual.device() == y.device() &&
                               nhwc_lanes8_tensor(residual);
    const auto b = bias.to(torch::kFloat32).contiguous();  // [C]; float32 already unless the weights are bf16
    const auto stream = c10::cuda::getCurrentCUDAStream(y.device().index());
    const int status = cuda_kernels::add_channel_bias_nhwc(
        y.data_ptr(), fuse_residual ? residual.data_ptr() : nullptr, y.scalar_type() == torch::kBFloat16,
        b.data_ptr<float>(), y.numel() / y.size(1), static_cast<int>(y.size(1)), static_cast<void*>(stream.stream()));
    TORCH_CHECK(status == 0, "conv2d_bias_residual_cuda: the kernel launch failed (CUDA error ", status, ")");
    return residual.defined() && !fuse_residual ? residual + y : y;
  }
#endif
  // an output the kernel does not take: LibTorch's adds, the bias in the output's dtype as
  // LibTorch's convolution would have added it
  y = y + bias.to(y.scalar_type()).view({1, -1, 1, 1});
  return residual.defined() ? residual + y : y;
}

}  // namespace diffuse
