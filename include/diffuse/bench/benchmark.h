// Timing of the project's own work, median of R runs after warm-up:
//   train   one TrainStep (forward, backward, gradient clipping, AdamW, EMA) on a batch
//   infer   one forward pass of the network on a batch (inference mode)
//   sample  a whole DDIM-S sampling (η = 0) of a batch; on a GPU with the network's calls replayed
//           from a CUDA graph, as `diffuse sample` runs them (or the whole loop captured, or neither)
//   conv    the device's rate on one large 3×3 convolution (the peak to compare the others with)
// with images/s, achieved GFLOP/s (from unet_forward_flops) and peak memory.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "diffuse/model/unet_shape.h"
#include "diffuse/runtime/precision.h"

namespace diffuse {

enum class BenchTask { train, infer, sample, conv };
BenchTask bench_task_from_string(const std::string& name);  // "train" | "infer" | "sample" | "conv"
std::string to_string(BenchTask task);

// What `sample` on a GPU captures in a CUDA graph: each network call (what `diffuse sample` and
// the editing commands do: runtime/cuda_graph_network.h), the whole loop of S steps (no per-step
// work on the host at all; possible for DDIM's deterministic loop), or nothing.
enum class CudaGraphScope { network, loop, off };
CudaGraphScope cuda_graph_scope_from_string(const std::string& name);  // "network" | "loop" | "off"
std::string to_string(CudaGraphScope scope);

struct BenchConfig {
  std::string model = "mnist";
  UNetShape shape;  // the named model's shape changed (train/bench --channels …)
  BenchTask task = BenchTask::train;
  int64_t batch_size = 64;
  int64_t steps = 50;          // DDIM steps for `sample`
  Precision precision = Precision::fp32;
  MemoryFormat memory_format = MemoryFormat::nchw;
  torch::Device device = torch::kCPU;
  int repeat = 5;
  int warmup = 1;
  CudaGraphScope cuda_graph = CudaGraphScope::network;  // `sample` on CUDA
  int64_t in_channels = 0;     // 0: the model's usual data (1×28² for mnist and tiny, 3×32² for ddpm-cifar10)
  int64_t image_size = 0;
  ConvShape conv_shape;        // `conv`: the convolution timed
  // "VAR=VALUE", or empty: the timed runs alternate between the environment as it is (A) and with
  // VAR=VALUE (B), in pairs A B, B A, A B, …, both warmed up: an A/B of a switch that the code
  // reads on every call (DIFFUSE_OWN_WINOGRAD=1, DIFFUSE_CONV_ALGORITHM=direct) in one process,
  // where the host's drift between two processes (±20–50 % here) does not enter.
  std::string alternate;
};

// The CUDA graph a configuration runs under: its `cuda_graph` for `sample` on a GPU, else off.
CudaGraphScope cuda_graph_in_use(const BenchConfig& c);

struct BenchResult {
  BenchConfig config;
  int64_t parameters = 0;
  double forward_flops_per_image = 0;   // one network evaluation
  std::vector<double> seconds;          // each timed run
  double median_seconds = 0;
  double images_per_second = 0;
  double gflops_per_second = 0;         // achieved: counted FLOPs / median time
  int64_t peak_memory_bytes = 0;        // see peak_memory_bytes()
  // With config.alternate: the B runs (`seconds` above holds the A runs), their median, and the
  // median over pairs of B's time / A's.
  std::vector<double> alternate_seconds;
  double alternate_median_seconds = 0;
  double alternate_median_ratio = 0;
};

// `on_run(i, seconds)` is called after each timed run (for a progress line; with
// config.alternate, after each pair, with A's seconds).
BenchResult run_benchmark(const BenchConfig& config, const std::function<void(int, double)>& on_run = {});
nlohmann::json to_json(const BenchResult& result);

}  // namespace diffuse
