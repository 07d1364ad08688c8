// The `diffuse` subcommands: each file adds one to the CLI11 app and runs it from its callback.
#pragma once

#include <CLI/CLI.hpp>

#include <torch/torch.h>

#include <memory>
#include <string>
#include <utility>

#include "diffuse/runtime/attention.h"
#include "diffuse/runtime/onednn_conv.h"
#include "diffuse/runtime/precision.h"
#include "diffuse/runtime/cuda_graph_network.h"
#include "diffuse/sampling/sampler.h"

namespace diffuse::cli {

void add_train_command(CLI::App& app);
void add_sample_command(CLI::App& app);
void add_schedule_command(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_edit_command(CLI::App& app);
void add_show_command(CLI::App& app);
void add_bench_command(CLI::App& app);

// Sampler flags shared by `sample` and `eval --metric fid`.
struct SamplerFlags {
  std::string sampler = "ddim", spacing = "leading", ddpm_variance = "posterior";
  int64_t steps = 0;  // 0: T for ddpm, 50 for ddim
  double eta = 0.0;
  bool no_clip = false;
};
void add_sampler_options(CLI::App& cmd, SamplerFlags& flags);
// The sampler and its step count for a diffusion of T steps; throws if --steps exceeds T.
std::unique_ptr<Sampler> make_sampler_from_flags(const SamplerFlags& flags, const GaussianDiffusion& diffusion,
                                                 int64_t& steps);

// A file the command will write (--out, --trajectory): its directory must exist and be writable,
// checked when the flags are read, so that a mistyped path fails at once and not after minutes of
// sampling (the file itself is written through a temporary beside it, io/atomic_file.h).
const CLI::Validator& writable_output_file();

// Numeric flags: finite and > 0, or finite and ≥ 0. CLI11's PositiveNumber and NonNegativeNumber
// let NaN through and name their bounds as 309-digit numbers.
const CLI::Validator& positive_number();
const CLI::Validator& non_negative_number();

// --device cpu|cuda, checked against what this build and machine have.
void add_device_option(CLI::App& cmd, std::string& device);
torch::Device resolve_device(const std::string& name);

// --device, --precision fp32|bf16|auto, --memory-format nchw|channels-last and
// --conv-kernels aten|onednn|auto and --attention math|onednn|fused|auto.
struct ComputeFlags {
  std::string device = "cpu", precision = "fp32", memory_format = "auto", conv_kernels = "auto", attention = "auto";
  bool no_cuda_graph = false;  // --no-cuda-graph (the inference commands)
};
struct Compute {
  torch::Device device = torch::kCPU;
  Precision precision = Precision::fp32;
  MemoryFormat memory_format = MemoryFormat::nchw;
  ConvKernels conv_kernels = ConvKernels::aten;  // already set process-wide by resolve_compute
  AttentionKernel attention = AttentionKernel::math;  // likewise
  bool cuda_graph = false;  // inference on a GPU: the network's calls replayed from a CUDA graph
};
void add_compute_options(CLI::App& cmd, ComputeFlags& flags);
// --no-cuda-graph, for the commands that only run the network forward (sample, edit, eval).
void add_cuda_graph_option(CLI::App& cmd, ComputeFlags& flags);
// What the command computes: training (gradients) or inference only (sampling, evaluation, editing).
enum class Workload { training, inference };
// Resolves the flags (timing a convolution for --precision auto) and says on stderr what it chose.
Compute resolve_compute(const ComputeFlags& flags, Workload workload);

// The network as the command runs it: its calls replayed from a CUDA graph where compute says so
// (runtime/cuda_graph_network.h), else as it is.
template <class Network>
Network with_cuda_graph(const Compute& compute, Network net) {
  return compute.cuda_graph ? replay_as_cuda_graph(std::move(net)) : net;
}

}  // namespace diffuse::cli
