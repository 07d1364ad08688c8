// How a run computes: asked for by name (what the CLI's flags say), resolved once against the
// device and the CPU, and then fixed for the run (the process-wide kernel choices included).
#pragma once

#include <torch/torch.h>

#include <functional>
#include <string>

#include "diffuse/runtime/attention.h"
#include "diffuse/runtime/onednn_conv.h"
#include "diffuse/runtime/precision.h"

namespace diffuse {

struct ComputeRequest {
  std::string device = "cpu";            // cpu | cuda
  std::string precision = "fp32";        // fp32 | bf16 | auto
  std::string memory_format = "auto";    // nchw | channels-last | auto
  std::string conv_kernels = "auto";     // aten | onednn | auto
  std::string attention = "auto";        // math | onednn | fused | auto
  bool cuda_graph = true;                // inference on a GPU: each network call replayed from a CUDA graph
};

// What the run computes: training (gradients) or inference only (sampling, evaluation, editing).
enum class Workload { training, inference };

struct Compute {
  torch::Device device = torch::kCPU;
  Precision precision = Precision::fp32;
  MemoryFormat memory_format = MemoryFormat::nchw;
  ConvKernels conv_kernels = ConvKernels::aten;       // set process-wide by resolve_compute
  AttentionKernel attention = AttentionKernel::math;  // likewise
  bool cuda_graph = false;
};

// "cpu" or "cuda" (throws where this build or machine has no CUDA device).
torch::Device resolve_device(const std::string& name);

// Resolves the request (timing a convolution for precision "auto"), sets the process-wide
// convolution and attention kernels, and says each choice worth knowing through `log`, one line
// each ("precision: bf16 (…)").
Compute resolve_compute(const ComputeRequest& request, Workload workload,
                        const std::function<void(const std::string&)>& log = {});

}  // namespace diffuse
