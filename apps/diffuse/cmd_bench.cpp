// diffuse bench: times the training step, a forward pass or a DDIM sampling of a named model on
// random data; see include/diffuse/bench/benchmark.h.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>

#if __has_include(<torch/csrc/autograd/profiler_legacy.h>)
#include <torch/csrc/autograd/profiler_legacy.h>
#define DIFFUSE_HAVE_RECORD_PROFILE 1
#else
#define DIFFUSE_HAVE_RECORD_PROFILE 0
#endif

#include "commands.h"
#include "diffuse/bench/benchmark.h"
#include "diffuse/io/atomic_file.h"
#include "diffuse/model/unet_config.h"
#include "diffuse/runtime/blocked_layout.h"
#include "diffuse/runtime/settings.h"

namespace diffuse::cli {

namespace {

struct BenchOptions {
  std::string what = "train";
  ComputeFlags compute;
  bool json = false, no_cuda_graph = false;
  std::string cuda_graph = "network";
  std::string profile;  // chrome-trace file of every operator, or empty
  std::vector<int64_t> conv_shape{16, 128, 32};
  BenchConfig config;
};

// The --profile trace goes to a temporary file beside the target, renamed once LibTorch has
// written it whole (so an earlier trace is never left half-overwritten). The file is created
// before the runs: a path that cannot be written fails at once, not after minutes of timing
// (LibTorch's profiler only logs that it could not open the file).
class TraceFile {
 public:
  explicit TraceFile(std::string path) : path_(std::move(path)), tmp_(temporary_path_beside(path_)) {
    FILE* f = std::fopen(tmp_.c_str(), "wb");
    if (f == nullptr) throw std::runtime_error("--profile: cannot write '" + path_ + "': " + std::strerror(errno));
    std::fclose(f);
  }
  ~TraceFile() { std::remove(tmp_.c_str()); }  // a run that failed leaves nothing behind
  TraceFile(const TraceFile&) = delete;
  TraceFile& operator=(const TraceFile&) = delete;
  const std::string& temporary() const { return tmp_; }
  void publish() {
    if (std::rename(tmp_.c_str(), path_.c_str()) != 0) {
      throw std::runtime_error("--profile: cannot rename '" + tmp_ + "' to '" + path_ + "': " + std::strerror(errno));
    }
  }

 private:
  std::string path_, tmp_;
};

void run_bench(BenchOptions& o) {
  auto& c = o.config;
  c.task = bench_task_from_string(o.what);
  const auto compute = resolve_compute(
      o.compute, c.task == BenchTask::infer || c.task == BenchTask::sample ? Workload::inference : Workload::training);
  c.device = compute.device;
  c.precision = compute.precision;
  c.memory_format = compute.memory_format;
  c.cuda_graph = o.no_cuda_graph ? CudaGraphScope::off : cuda_graph_scope_from_string(o.cuda_graph);
  c.conv_shape = {o.conv_shape.at(0), o.conv_shape.at(1), o.conv_shape.at(2)};
  // who computes the convolutions: oneDNN's bf16 kernels for bf16 channels-last on a CPU with
  // native bf16, else the float32 choice (bf16 NCHW: LibTorch's through autocast)
  const bool channels_last = c.memory_format == MemoryFormat::channels_last;
  const std::string convolutions = onednn_bf16_convolutions(c.device, c.precision, channels_last) ? "onednn-bf16"
                                   : c.precision == Precision::bf16                              ? "aten"
                                                                                  : to_string(compute.conv_kernels);
  if (!o.json && c.task == BenchTask::conv) {
    std::fprintf(stderr, "bench: conv, %s, %s, %s (%d threads)\n", to_string(c.precision).c_str(),
                 to_string(c.memory_format).c_str(), c.device.str().c_str(), torch::get_num_threads());
  } else if (!o.json) {
    std::string sampling;
    if (c.task == BenchTask::sample) sampling = ", DDIM-" + std::to_string(c.steps);
    if (c.task == BenchTask::sample && c.device.is_cuda()) sampling += ", CUDA graph: " + to_string(c.cuda_graph);
    std::fprintf(stderr, "bench: %s, model %s, batch %lld%s, %s, %s, %s convolutions, %s attention, %s (%d threads)\n",
                 o.what.c_str(), c.model.c_str(), static_cast<long long>(c.batch_size), sampling.c_str(),
                 to_string(c.precision).c_str(), to_string(c.memory_format).c_str(),
                 // float32 oneDNN runs on activations in this CPU's channel blocks (runtime/blocked_layout.h)
                 (convolutions == "onednn" && runtime_settings().blocked_activations
                      ? "onednn (" + std::to_string(channel_block()) + "-channel blocks)"
                      : convolutions)
                     .c_str(),
                 to_string(compute.attention).c_str(), c.device.str().c_str(), torch::get_num_threads());
  }
  if (!o.json && c.device.is_cpu()) std::fprintf(stderr, "cpu: %s\n", cpu_description().c_str());
  auto on_run = [&](int i, double s) {
    if (!o.json) std::fprintf(stderr, "  run %d/%d: %.4f s\n", i + 1, c.repeat, s);
  };
#if DIFFUSE_HAVE_RECORD_PROFILE
  // The profile starts after the first timed run: warm-up and first-call work (kernel choice,
  // code generation) stay out of it.
  std::unique_ptr<torch::autograd::profiler::RecordProfile> profiler;
  if (!o.profile.empty() && c.repeat < 2) throw std::invalid_argument("--profile needs --repeat 2 or more");
  std::optional<TraceFile> trace;
  if (!o.profile.empty()) trace.emplace(o.profile);
  auto on_timed_run = [&](int i, double s) {
    on_run(i, s);
    if (i == 0 && trace) profiler = std::make_unique<torch::autograd::profiler::RecordProfile>(trace->temporary());
  };
#else
  if (!o.profile.empty()) throw std::runtime_error("--profile: this LibTorch has no legacy profiler (RecordProfile)");
  auto& on_timed_run = on_run;
#endif
  const auto r = run_benchmark(c, on_timed_run);
#if DIFFUSE_HAVE_RECORD_PROFILE
  if (profiler) {
    profiler.reset();  // writes the trace
    trace->publish();
    std::fprintf(stderr, "profile: %s (summary: bench/profile_summary.py %s)\n", o.profile.c_str(), o.profile.c_str());
  }
#endif
  if (c.task == BenchTask::conv && !o.json) {
    const auto& shape = c.conv_shape;
    std::printf("3x3 convolution forward (batch %lld, %lld -> %lld channels, %lldx%lld, %s kernels): %.1f GFLOP/s\n",
                static_cast<long long>(shape.batch), static_cast<long long>(shape.channels),
                static_cast<long long>(shape.channels), static_cast<long long>(shape.size),
                static_cast<long long>(shape.size), convolutions.c_str(), r.gflops_per_second);
    return;
  }
  if (o.json) {
    auto j = to_json(r);
    if (c.device.is_cpu()) j["cpu"] = cpu_description();
    j["conv_kernels"] = convolutions;
    j["attention"] = to_string(compute.attention);
    std::cout << j.dump() << std::endl;
    return;
  }
  std::printf("%-8s %-13s %6s %-5s %-13s %10s %10s %10s %10s\n", "what", "model", "batch", "prec", "format", "median s",
              "img/s", "GFLOP/s", "peak MiB");
  std::printf("%-8s %-13s %6lld %-5s %-13s %10.4f %10.1f %10.1f %10.0f\n", o.what.c_str(), c.model.c_str(),
              static_cast<long long>(c.batch_size), to_string(c.precision).c_str(), to_string(c.memory_format).c_str(),
              r.median_seconds, r.images_per_second, r.gflops_per_second,
              static_cast<double>(r.peak_memory_bytes) / (1024.0 * 1024.0));
  if (!c.alternate.empty()) {
    const double images_per_second = static_cast<double>(c.batch_size) / r.alternate_median_seconds;
    std::printf("with %s: median %.4f s, %.1f img/s; B/A, the median over %d pairs of runs: %.3f\n",
                c.alternate.c_str(), r.alternate_median_seconds, images_per_second, c.repeat, r.alternate_median_ratio);
  }
  std::printf("(%lld parameters, %.3f GFLOP per image per forward pass%s)\n", static_cast<long long>(r.parameters),
              r.forward_flops_per_image / 1e9,
              c.task == BenchTask::train ? "; a training step counts 3 forward passes" : "");
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto o = std::make_shared<BenchOptions>();
  auto& c = o->config;
  auto* cmd = app.add_subcommand("bench", "Time training, inference or sampling of a model on random data");
  cmd->add_option("--model", c.model, "Network: tiny, mnist (1x28x28) or ddpm-cifar10 (3x32x32)")
      ->check(CLI::IsMember(unet_config_names()))
      ->capture_default_str();
  add_model_shape_options(*cmd, c.shape);
  cmd->add_option("--what", o->what, "train (step: forward, backward, AdamW, EMA), infer (forward), sample (DDIM) or conv (the device's peak on a 3x3 convolution)")
      ->check(CLI::IsMember({"train", "infer", "sample", "conv"}))
      ->capture_default_str();
  cmd->add_option("--batch-size", c.batch_size, "Images per batch")->check(CLI::Range(1, 65536))->capture_default_str();
  cmd->add_option("--steps", c.steps, "DDIM steps for --what sample")->check(CLI::Range(1, 1000))->capture_default_str();
  cmd->add_option("--repeat", c.repeat, "Timed runs (the median is reported)")->check(CLI::Range(1, 1000))->capture_default_str();
  cmd->add_option("--warmup", c.warmup, "Untimed runs first")->check(CLI::Range(0, 100))->capture_default_str();
  cmd->add_option("--alternate", c.alternate,
                  "VAR=VALUE: alternate the timed runs between the environment as it is (A) and with VAR=VALUE "
                  "(B) in one process, pair by pair, and print both medians and B/A; for switches the code reads on "
                  "every call (DIFFUSE_OWN_WINOGRAD=1, DIFFUSE_CONV_ALGORITHM=direct|winograd, DIFFUSE_FUSED_ADAMW=0, "
                  "the DIFFUSE_CUDA_* kernels' =0; sampling on a GPU only with --cuda-graph off)");
  cmd->add_option("--cuda-graph", o->cuda_graph,
                  "--what sample on CUDA: replay each network call from a CUDA graph (network, as diffuse sample "
                  "does), capture the whole DDIM loop (loop), or run eagerly (off)")
      ->check(CLI::IsMember({"network", "loop", "off"}))
      ->capture_default_str();
  cmd->add_flag("--no-cuda-graph", o->no_cuda_graph, "The same as --cuda-graph off");
  cmd->add_flag("--json", o->json, "Print one JSON object instead of the table");
  cmd->add_option("--conv-shape", o->conv_shape, "--what conv: batch, channels and image size of the convolution")
      ->expected(3)
      ->check(positive_number())
      ->capture_default_str();
  cmd->add_option("--profile", o->profile,
                  "Write every operator's time in timed runs 2 to R as a chrome trace to this file; "
                  "bench/profile_summary.py sums it per operator");
  add_compute_options(*cmd, o->compute);
  cmd->callback([o] { run_bench(*o); });
}

}  // namespace diffuse::cli
