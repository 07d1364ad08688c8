// Compute precision and memory format: float32 everywhere, or bfloat16 mixed precision (float32
// weights, optimizer state and losses; bf16 convolutions and matrix products through autocast).
//
// bf16 is only a win where the hardware computes it natively: on CUDA (Ampere and newer) and on
// CPUs with AVX512-BF16 or AMX-BF16. Elsewhere (AVX2 only) oneDNN emulates it and a 3×3
// convolution ran ten times slower than float32, so `auto` checks the CPU flags and then times
// one convolution both ways before it chooses bf16.
#pragma once

#include <torch/torch.h>

#include <string>

namespace diffuse {

enum class Precision { fp32, bf16 };
std::string to_string(Precision p);
// "fp32" or "bf16"; "auto" is resolved by resolve_precision.
Precision precision_from_string(const std::string& name);

// What the CPU advertises in /proc/cpuinfo: bf16 in hardware (avx512_bf16 or amx_bf16).
bool cpu_has_native_bf16();
// The CPU's name and its vector extensions in one line, e.g. "Intel Xeon … (avx512f avx512_bf16 amx_bf16)".
std::string cpu_description();

// A 3×3, stride-1 convolution's input: batch × channels × size × size, channels → channels.
struct ConvShape {
  int64_t batch = 16, channels = 128, size = 32;
};
// GFLOP/s of the forward pass of one 3×3 convolution, median of a few runs; float32 on the CPU
// with `onednn_winograd` runs the blocked layout's kernels (Winograd where timed faster: oneDNN's,
// or the own F(4×4, 3×3) where oneDNN has none; the rate then counts a direct convolution's
// FLOPs: an effective rate), else LibTorch's convolution.
double measure_conv_gflops(torch::Device device, Precision precision, bool channels_last, double seconds = 0.3,
                           ConvShape shape = {}, bool onednn_winograd = false);

struct PrecisionChoice {
  Precision precision = Precision::fp32;
  std::string reason;  // one line for the log: why this precision
};
// "fp32" / "bf16" as asked; "auto": bf16 on CUDA; on CPU bf16 only if the CPU has it natively and
// its convolution runs at least 1.2× faster than float32's: the kernels each precision then runs
// where oneDNN's bf16 path is available (bf16 channels-last through oneDNN against float32 through
// oneDNN's Winograd), else LibTorch's in both. (LibTorch's NCHW bf16 lost to Winograd on one large
// convolution, yet bf16 still trained both U-Nets faster, since autocast also covers the matrix
// products and the small convolutions: docs/PERFORMANCE.md.)
// A bf16 ask on the CPU where a small bf16 convolution fails (cpu_bf16_convolution_failure) throws
// std::invalid_argument naming why; `auto` then takes fp32.
PrecisionChoice resolve_precision(const std::string& name, torch::Device device);

// Why a small bf16 convolution on the CPU fails, through the kernels a bf16 network would run
// (oneDNN's NHWC kernels where onednn_bf16_available(), else LibTorch's); empty where it runs.
// The CPU's flags are not enough: under ONEDNN_MAX_CPU_ISA=AVX2 on a CPU with avx512_bf16, or
// where the OS has not enabled the registers, oneDNN creates no bf16 convolution.
std::string cpu_bf16_convolution_failure();

// Whether autocast is on for this device type (LibTorch 1.13 and 2.x spell it differently).
bool autocast_enabled(torch::DeviceType type);

// Autocast to bf16 on `device` for the lifetime of the scope (no-op for fp32); restores the
// previous state and empties the cast cache when it ends.
class AutocastScope {
 public:
  AutocastScope(torch::Device device, Precision precision);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool active_ = false, was_enabled_ = false;
  torch::DeviceType device_type_;
  at::ScalarType previous_dtype_;
};

// NCHW or channels-last (NHWC in memory) for the network's activations and convolution weights.
enum class MemoryFormat { nchw, channels_last };
MemoryFormat memory_format_from_string(const std::string& name);  // "nchw" | "channels-last"
std::string to_string(MemoryFormat f);
struct MemoryFormatChoice {
  MemoryFormat format = MemoryFormat::nchw;
  std::string reason;  // one line for the log
};
// "nchw" / "channels-last" as asked; "auto": channels-last for inference on a GPU where the own
// GroupNorm kernel is built (runtime/group_norm_cuda.h: cuDNN's NHWC convolutions then run without
// layout copies; docs/PERFORMANCE.md has the GPU's numbers), and for bf16 on a CPU with native bf16 and oneDNN (oneDNN's bf16 convolutions and the
// own GroupNorm read and write NHWC as it lies: runtime/onednn_conv.h's onednn_conv_nhwc_bf16);
// else NCHW (training on a GPU, where LibTorch's GroupNorm copies channels-last tensors; float32
// on the CPU, which has its own channel-blocked layout).
MemoryFormatChoice resolve_memory_format(const std::string& name, torch::Device device, bool inference_only,
                                         Precision precision);

// Whether convolutions in this precision and layout on this device run through oneDNN's bf16
// NHWC kernels (runtime/onednn_conv.h's onednn_conv_nhwc_bf16): bf16, channels-last, a CPU where
// onednn_bf16_available().
bool onednn_bf16_convolutions(torch::Device device, Precision precision, bool channels_last);
inline c10::MemoryFormat torch_memory_format(MemoryFormat f) {
  return f == MemoryFormat::channels_last ? c10::MemoryFormat::ChannelsLast : c10::MemoryFormat::Contiguous;
}

}  // namespace diffuse
