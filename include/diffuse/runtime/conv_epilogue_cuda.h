// A convolution with its bias (and, where given, a residual connection's sum) added by one
// hand-written kernel (src/runtime/cuda/channel_bias_nhwc.cu) instead of LibTorch's passes, for
// channels-last activations on the GPU without gradients (sampling, evaluation, editing):
//   y = conv2d(x, W) + b[c] (+ residual)
// LibTorch adds a cuDNN convolution's bias in a broadcasting pass its element-wise kernels do not
// vectorise; on an H200 those passes took almost a quarter of a ddpm-cifar10 forward pass
// (docs/PERFORMANCE.md).
#pragma once

#include <torch/torch.h>

namespace diffuse {

// Whether conv2d_bias_residual_cuda takes this convolution: the kernel is built and not switched
// off (DIFFUSE_CUDA_CONV_BIAS=0), x is a 4-D channels-last CUDA tensor, the convolution has a bias
// and a multiple of 8 output channels, and no gradient is wanted.
bool cuda_conv_epilogue_applies(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias);

// conv2d(x, weight, stride, padding) + bias (+ residual, where defined), in the dtype and memory
// format LibTorch's convolution gives (under autocast, bf16 channels-last). The residual joins in
// the kernel where it has the output's shape, dtype and memory format, else in LibTorch's add
// (`residual + y`, as without the kernel). Throws where cuda_conv_epilogue_applies is false.
torch::Tensor conv2d_bias_residual_cuda(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                                        int64_t stride, int64_t padding, const torch::Tensor& residual = {});

}  // namespace diffuse
