#include "diffuse/pipeline/compute.h"

#include <stdexcept>

#include "diffuse/runtime/device.h"

namespace diffuse {

torch::Device resolve_device(const std::string& name) {
  if (name == "cuda") {
    if (!torch::cuda::is_available()) {
      throw std::runtime_error("--device cuda: this build of LibTorch or this machine has no CUDA device");
    }
    return torch::Device(torch::kCUDA);
  }
  if (name != "cpu") throw std::invalid_argument("unknown device '" + name + "' (expected cpu or cuda)");
  return torch::Device(torch::kCPU);
}

Compute resolve_compute(const ComputeRequest& request, Workload workload,
                        const std::function<void(const std::string&)>& log) {
  auto say = [&](const std::string& line) {
    if (log) log(line);
  };
  Compute c;
  c.device = resolve_device(request.device);
  const auto choice = resolve_precision(request.precision, c.device);
  c.precision = choice.precision;
  const auto format =
      resolve_memory_format(request.memory_format, c.device, workload == Workload::inference, c.precision);
  c.memory_format = format.format;
  if (c.device.is_cuda() || request.memory_format != "auto" || c.memory_format != MemoryFormat::nchw) {
    say("memory format: " + to_string(c.memory_format) + " (" + format.reason + ")");
  }
  if (request.precision == "auto" || c.precision != Precision::fp32) {
    say("precision: " + to_string(c.precision) + " (" + choice.reason + ")");
  }
  // The kernels matter for float32 only (bf16 convolutions run through autocast).
  const auto kernels = resolve_conv_kernels(request.conv_kernels, c.device, c.precision == Precision::fp32);
  c.conv_kernels = kernels.kernels;
  set_conv_kernels(c.conv_kernels);
  if ((c.conv_kernels == ConvKernels::onednn && c.precision == Precision::fp32) || request.conv_kernels != "auto") {
    say("convolutions: " + to_string(c.conv_kernels) + " (" + kernels.reason + ")");
  }
  const auto attention = resolve_attention_kernel(request.attention, c.device, c.precision == Precision::fp32);
  c.attention = attention.kernel;
  set_attention_kernel(c.attention);
  if (request.attention != "auto") say("attention: " + to_string(c.attention) + " (" + attention.reason + ")");
  c.cuda_graph = workload == Workload::inference && c.device.is_cuda() && request.cuda_graph && cuda_graphs_available();
  if (c.precision == Precision::bf16 && c.device.is_cpu() && !cpu_has_native_bf16()) {
    say("warning: this CPU has no native bf16; bf16 will be much slower than fp32");
  }
  return c;
}

}  // namespace diffuse
