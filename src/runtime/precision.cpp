#include "diffuse/runtime/precision.h"

#include <ATen/autocast_mode.h>

#include "diffuse/runtime/blocked_layout.h"
#include "diffuse/runtime/device.h"
#include "diffuse/runtime/group_norm_cuda.h"
#include "diffuse/runtime/onednn_conv.h"

#include <algorithm>
#include <chrono>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <vector>

namespace diffuse {

// LibTorch 2.4 replaced the per-device autocast functions by ones taking the device type.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
#define DIFFUSE_AUTOCAST_BY_DEVICE_TYPE 1
#else
#define DIFFUSE_AUTOCAST_BY_DEVICE_TYPE 0
#endif

bool autocast_enabled(torch::DeviceType type) {
#if DIFFUSE_AUTOCAST_BY_DEVICE_TYPE
  return at::autocast::is_autocast_enabled(type);
#else
  return type == torch::kCUDA ? at::autocast::is_enabled() : at::autocast::is_cpu_enabled();
#endif
}

namespace {

void set_autocast(torch::DeviceType type, bool enabled, at::ScalarType dtype) {
#if DIFFUSE_AUTOCAST_BY_DEVICE_TYPE
  at::autocast::set_autocast_dtype(type, dtype);
  at::autocast::set_autocast_enabled(type, enabled);
#else
  if (type == torch::kCUDA) {
    at::autocast::set_autocast_gpu_dtype(dtype);
    at::autocast::set_enabled(enabled);
  } else {
    at::autocast::set_autocast_cpu_dtype(dtype);
    at::autocast::set_cpu_enabled(enabled);
  }
#endif
}

at::ScalarType autocast_dtype(torch::DeviceType type) {
#if DIFFUSE_AUTOCAST_BY_DEVICE_TYPE
  return at::autocast::get_autocast_dtype(type);
#else
  return type == torch::kCUDA ? at::autocast::get_autocast_gpu_dtype() : at::autocast::get_autocast_cpu_dtype();
#endif
}

// The "flags" line of /proc/cpuinfo (empty where there is none).
std::string cpu_flags() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("flags", 0) == 0) return " " + line.substr(line.find(':') + 1) + " ";
  }
  return "";
}

bool has_flag(const std::string& flags, const std::string& flag) { return flags.find(" " + flag + " ") != std::string::npos; }

}  // namespace

std::string to_string(Precision p) { return p == Precision::fp32 ? "fp32" : "bf16"; }

Precision precision_from_string(const std::string& name) {
  if (name == "fp32") return Precision::fp32;
  if (name == "bf16") return Precision::bf16;
  throw std::invalid_argument("unknown precision '" + name + "' (expected fp32, bf16 or auto)");
}

MemoryFormat memory_format_from_string(const std::string& name) {
  if (name == "nchw") return MemoryFormat::nchw;
  if (name == "channels-last") return MemoryFormat::channels_last;
  throw std::invalid_argument("unknown memory format '" + name + "' (expected nchw or channels-last)");
}

std::string to_string(MemoryFormat f) { return f == MemoryFormat::nchw ? "nchw" : "channels-last"; }

MemoryFormatChoice resolve_memory_format(const std::string& name, torch::Device device, bool inference_only,
                                         Precision precision) {
  if (name != "auto") return {memory_format_from_string(name), "asked for"};
  if (onednn_bf16_convolutions(device, precision, /*channels_last=*/true)) {
    return {MemoryFormat::channels_last,
            "auto: channels-last for bf16 on this CPU, whose native bf16 kernels in oneDNN read NHWC"};
  }
  if (!device.is_cuda()) return {MemoryFormat::nchw, "auto: nchw on the CPU"};
  if (!inference_only) return {MemoryFormat::nchw, "auto: nchw for training (LibTorch's GroupNorm copies channels-last)"};
  if (!cuda_group_norm_built()) return {MemoryFormat::nchw, "auto: nchw (built without the own CUDA GroupNorm kernel)"};
  return {MemoryFormat::channels_last, "auto: channels-last for inference on the GPU (own GroupNorm kernel)"};
}

bool onednn_bf16_convolutions(torch::Device device, Precision precision, bool channels_last) {
  return device.is_cpu() && precision == Precision::bf16 && channels_last && onednn_bf16_available();
}

bool cpu_has_native_bf16() {
  const auto flags = cpu_flags();
  return has_flag(flags, "avx512_bf16") || has_flag(flags, "amx_bf16");
}

std::string cpu_description() {
  std::ifstream in("/proc/cpuinfo");
  std::string line, name = "unknown CPU";
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      name = line.substr(line.find(':') + 2);
      break;
    }
  }
  const auto flags = cpu_flags();
  std::string ext;
  for (const char* f : {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}) {
    if (has_flag(flags, f)) ext += (ext.empty() ? "" : " ") + std::string(f);
  }
  return name + " (" + (ext.empty() ? "no AVX2" : ext) + ")";
}

double measure_conv_gflops(torch::Device device, Precision precision, bool channels_last, double seconds,
                           ConvShape shape, bool onednn_winograd) {
  torch::NoGradGuard no_grad;
  const int64_t B = shape.batch, C = shape.channels, H = shape.size;
  const auto dtype = precision == Precision::bf16 ? torch::kBFloat16 : torch::kFloat32;
  const auto format = channels_last ? c10::MemoryFormat::ChannelsLast : c10::MemoryFormat::Contiguous;
  auto x = torch::randn({B, C, H, H}, torch::dtype(dtype).device(device)).contiguous(format);
  auto w = torch::randn({C, C, 3, 3}, torch::dtype(dtype).device(device)).contiguous(format);
  const double flops = 2.0 * B * C * C * 9 * H * H;  // multiply-adds × 2
  const bool onednn = onednn_winograd && device.is_cpu() && !channels_last && precision == Precision::fp32;
  // bf16 channels-last on a CPU: the kernels the network then runs (float32 master weights)
  const bool onednn_bf16 = onednn_bf16_convolutions(device, precision, channels_last);
  const auto w32 = w.to(torch::kFloat32);
  // float32 through oneDNN: on blocked activations, as the network runs them (Winograd or direct,
  // timed per shape; oneDNN's Winograd, or the own where oneDNN has none)
  const bool blocked = onednn && C % channel_block() == 0;
  const auto x5 = blocked ? to_blocked(x) : torch::Tensor();
  auto run = [&] {
    if (onednn_bf16) {
      onednn_conv_nhwc_bf16(x, w32, {}, 1);
    } else if (blocked) {
      onednn_conv_blocked(x5, w, {}, 1);
    } else if (onednn) {
      onednn_conv3x3(x, w, {});
    } else {
      torch::conv2d(x, w, {}, 1, 1);
    }
    synchronize(device);  // wait for the GPU
  };
  run();  // warm-up: oneDNN picks and caches its kernel
  std::vector<double> rates;
  const auto begin = std::chrono::steady_clock::now();
  while (rates.size() < 3 ||
         (rates.size() < 50 && std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count() < seconds)) {
    const auto t0 = std::chrono::steady_clock::now();
    run();
    rates.push_back(flops / std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / 1e9);
  }
  std::nth_element(rates.begin(), rates.begin() + rates.size() / 2, rates.end());
  return rates[rates.size() / 2];
}

std::string cpu_bf16_convolution_failure() {
  try {
    torch::NoGradGuard no_grad;
    const auto x = torch::zeros({1, 16, 4, 4}, torch::kBFloat16), w = torch::zeros({16, 16, 3, 3});
    if (onednn_bf16_available()) {  // the kernels a bf16 network then runs
      onednn_conv_nhwc_bf16(x.contiguous(c10::MemoryFormat::ChannelsLast), w, {}, 1);
    } else {
      torch::conv2d(x, w.to(torch::kBFloat16), {}, 1, 1);
    }
    return {};
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  } catch (const std::exception& e) {
    return e.what();
  }
}

PrecisionChoice resolve_precision(const std::string& name, torch::Device device) {
  if (name != "auto") {
    const auto precision = precision_from_string(name);
    if (precision == Precision::bf16 && device.is_cpu()) {
      if (const auto failure = cpu_bf16_convolution_failure(); !failure.empty()) {
        throw std::invalid_argument("--precision bf16: bf16 convolutions do not run on this CPU (" + failure +
                                    "); use --precision fp32 or auto");
      }
    }
    return {precision, "asked for"};
  }
  if (device.is_cuda()) return {Precision::bf16, "auto: CUDA computes bf16 natively"};
  if (!cpu_has_native_bf16()) return {Precision::fp32, "auto: this CPU has no native bf16 (avx512_bf16/amx_bf16)"};
  if (const auto failure = cpu_bf16_convolution_failure(); !failure.empty()) {
    return {Precision::fp32, "auto: the CPU flags say bf16, but a bf16 convolution failed (" + failure + ")"};
  }
  // where bf16 can run through oneDNN, float32 does too (Winograd)
  const bool onednn = onednn_bf16_convolutions(device, Precision::bf16, /*channels_last=*/true);
  const double fp32 = measure_conv_gflops(device, Precision::fp32, false, 0.3, {}, /*onednn_winograd=*/onednn);
  const double bf16 = measure_conv_gflops(device, Precision::bf16, /*channels_last=*/onednn);
  std::ostringstream why;
  why.precision(0);
  why << std::fixed << "auto: 3×3 convolution " << bf16 << " GFLOP/s in bf16 against " << fp32 << " in fp32"
      << (onednn ? ", oneDNN's bf16 channels-last and fp32 Winograd kernels" : ", LibTorch's kernels");
  return {bf16 >= 1.2 * fp32 ? Precision::bf16 : Precision::fp32, why.str()};
}

AutocastScope::AutocastScope(torch::Device device, Precision precision)
    : device_type_(device.type()), previous_dtype_(autocast_dtype(device.type())) {
  if (precision != Precision::bf16) return;
  active_ = true;
  was_enabled_ = autocast_enabled(device_type_);
  set_autocast(device_type_, true, torch::kBFloat16);
}

AutocastScope::~AutocastScope() {
  if (!active_) return;
  set_autocast(device_type_, was_enabled_, previous_dtype_);
  if (!was_enabled_) at::autocast::clear_cache();
}

}  // namespace diffuse
