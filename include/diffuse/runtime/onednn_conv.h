// 3×3 convolutions on the CPU through oneDNN directly, with Winograd's minimal filtering where
// oneDNN has it (float32, AVX-512).
//
// ATen reaches oneDNN too, but always with its direct algorithm, re-ordering NCHW tensors into
// oneDNN's blocked layout on every call. On an AVX-512 CPU oneDNN also has Winograd F(4×4, 3×3):
// 36 instead of 144 multiplications per 4×4 output tile and channel pair. Measured on the
// U-Nets' shapes (2 threads, docs/PERFORMANCE.md): forward 1.5–2.8× faster than ATen's, except on
// 4×4 images, where it is slower; so each shape is timed once and keeps the faster kernel.
// Winograd's transforms round differently from direct summation: results agree with ATen's to
// about 1e-5 relative, as two float32 summation orders do.
//
// Compiled only where the oneDNN headers were found (DIFFUSE_HAVE_ONEDNN, Debian's libdnnl-dev,
// the same library Debian's LibTorch runs on); elsewhere every call takes ATen's path.
#pragma once

#include <torch/torch.h>

#include <string>

namespace diffuse {

// Who computes the network's 3×3 stride-1 convolutions in float32 on the CPU.
enum class ConvKernels { aten, onednn };
std::string to_string(ConvKernels k);
ConvKernels conv_kernels_from_string(const std::string& name);  // "aten" | "onednn"

// Whether this build has the oneDNN path at all.
bool onednn_conv_built();

// Process-wide choice (like torch.backends flags): which kernels conv3x3 below uses.
void set_conv_kernels(ConvKernels kernels);
ConvKernels conv_kernels();

// y = conv2d(x, weight, bias, stride 1, padding 1) through oneDNN, differentiable in x, weight
// and bias. x: [N, C, H, W] float32 on the CPU; weight: [O, C, 3, 3]; bias: [O] or undefined.
// Uses Winograd where oneDNN implements it for this CPU and shape, else oneDNN's direct algorithm.
// Throws where the build has no oneDNN.
torch::Tensor onednn_conv3x3(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias);

// A k×k convolution (k odd, padding k/2, any stride: the U-Net's 3×3, 1×1 and stride-2 ones) on
// channel-blocked activations (runtime/blocked_layout.h): x5 [N, C/B, H, W, B] →
// [N, O/B, H', W', B], O a multiple of B (8 or 16). oneDNN's kernels read and write this layout
// natively, so nothing is re-ordered around the call; Winograd where oneDNN has it (3×3, stride
// 1), else its direct algorithm. Differentiable; throws where the build has no oneDNN.
torch::Tensor onednn_conv_blocked(const torch::Tensor& x5, const torch::Tensor& weight, const torch::Tensor& bias,
                                  int64_t stride);

// A k×k convolution (k odd, padding k/2, any stride) under the CPU's bf16 autocast, with the
// activations channels-last (NHWC): x [N, C, H, W] in channels-last memory, bf16 (or float32, cast
// to bf16 here); weight [O, C, k, k] and bias [O] float32 (the master weights: oneDNN converts them
// to bf16 as it re-orders them for its kernel) → y bf16, channels-last. oneDNN's bf16 kernels
// (AMX where the CPU has it) read and write NHWC as it lies: LibTorch 1.13's bf16 convolution
// copies its input on every call, forward and backward. ∂L/∂W and ∂L/∂b come out in float32.
// Differentiable; throws where the build has no oneDNN.
torch::Tensor onednn_conv_nhwc_bf16(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                                    int64_t stride);

// Whether this process runs bf16 convolutions of channels-last activations through oneDNN: built
// with oneDNN, a CPU with native bf16 (avx512_bf16 or amx_bf16) where oneDNN also creates bf16
// convolutions (not so under ONEDNN_MAX_CPU_ISA=AVX2, say), and the environment variable
// DIFFUSE_ONEDNN_BF16 not "0" (a switch for measuring the gain).
bool onednn_bf16_available();

// Whether onednn_conv_nhwc_bf16 takes x: onednn_bf16_available(), bf16 autocast on the CPU, x bf16
// or float32 channels-last with more than one channel, weight float32.
bool nhwc_bf16_conv_applies(const torch::Tensor& x, const torch::Tensor& weight);

// Whether a network may carry x (NCHW) channel-blocked from its first convolution to its last
// (runtime/blocked_layout.h, runtime/ops.h): conv_kernels() is onednn, x is a float32
// contiguous CPU tensor outside autocast, every width in `channels` is a multiple of 16, and the
// environment variable DIFFUSE_BLOCKED_ACTIVATIONS is not "0" (a switch for measuring the gain).
bool blocked_activations_apply(const torch::Tensor& x, std::initializer_list<int64_t> channels);

// The algorithm oneDNN runs for this shape, e.g. "jit_wino_4x3:avx512_core" (for logs and tests).
std::string onednn_conv3x3_implementation(int64_t batch, int64_t in_channels, int64_t out_channels, int64_t height,
                                          int64_t width);

// A 3×3, stride-1, padding-1 convolution module applied to x: oneDNN when conv_kernels() is
// onednn, x is a float32 NCHW CPU tensor outside autocast, and oneDNN was the faster of the two
// when this shape (and kind of call: with or without gradients) was first timed; else the
// module's own forward. The per-shape choice is made once per process, so two runs agree to
// rounding, not bit for bit; --conv-kernels aten gives bitwise-repeatable runs.
torch::Tensor conv3x3(torch::nn::Conv2d& conv, const torch::Tensor& x);

struct ConvKernelsChoice {
  ConvKernels kernels = ConvKernels::aten;
  std::string reason;  // one line for the log
};
// "aten" / "onednn" as asked ("onednn" throws where it is not built); "auto": onednn on the CPU
// where built and where oneDNN has a Winograd kernel for this CPU (then each shape is timed once
// against ATen by conv3x3); aten where the run cannot be float32 (`may_run_fp32` false: bf16).
ConvKernelsChoice resolve_conv_kernels(const std::string& name, torch::Device device, bool may_run_fp32);

}  // namespace diffuse
