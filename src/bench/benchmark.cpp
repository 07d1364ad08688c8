#include "diffuse/bench/benchmark.h"

#include "diffuse/runtime/onednn_conv.h"

#include <algorithm>
#include <chrono>
#include <optional>
#include <stdexcept>
#include <utility>

#include "diffuse/diffusion/gaussian_diffusion.h"
#include "diffuse/model/unet.h"
#include "diffuse/model/unet_flops.h"
#include "diffuse/runtime/device.h"
#include "diffuse/sampling/ddim.h"
#include "diffuse/runtime/cuda_graph_network.h"
#include "diffuse/sampling/sample_loop.h"
#include "diffuse/train/train_step.h"
#include "diffuse/util/environment.h"

namespace diffuse {

BenchTask bench_task_from_string(const std::string& name) {
  if (name == "train") return BenchTask::train;
  if (name == "infer") return BenchTask::infer;
  if (name == "sample") return BenchTask::sample;
  if (name == "conv") return BenchTask::conv;
  throw std::invalid_argument("unknown benchmark '" + name + "' (expected train, infer, sample or conv)");
}

CudaGraphScope cuda_graph_scope_from_string(const std::string& name) {
  if (name == "network") return CudaGraphScope::network;
  if (name == "loop") return CudaGraphScope::loop;
  if (name == "off") return CudaGraphScope::off;
  throw std::invalid_argument("unknown CUDA graph scope '" + name + "' (expected network, loop or off)");
}

std::string to_string(CudaGraphScope scope) {
  switch (scope) {
    case CudaGraphScope::network: return "network";
    case CudaGraphScope::loop: return "loop";
    case CudaGraphScope::off: return "off";
  }
  return "?";
}

CudaGraphScope cuda_graph_in_use(const BenchConfig& c) {
  return c.task == BenchTask::sample && c.device.is_cuda() ? c.cuda_graph : CudaGraphScope::off;
}

std::string to_string(BenchTask task) {
  switch (task) {
    case BenchTask::train: return "train";
    case BenchTask::infer: return "infer";
    case BenchTask::sample: return "sample";
    default: return "conv";
  }
}

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// The variable and value of an A/B (BenchConfig::alternate): "VAR=VALUE" split in two.
std::pair<std::string, std::string> alternate_assignment(const std::string& setting) {
  const auto eq = setting.find('=');
  if (eq == std::string::npos || eq == 0) {
    throw std::invalid_argument("bench --alternate: expected VAR=VALUE, got '" + setting + "'");
  }
  return {setting.substr(0, eq), setting.substr(eq + 1)};
}

// Seconds of one run (which must leave its work finished on the device).
double seconds_of(const BenchConfig& c, const std::function<void()>& run) {
  const auto t0 = std::chrono::steady_clock::now();
  run();
  synchronize(c.device);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

struct Timings {
  std::vector<double> a, b;  // b: the alternate runs, empty without c.alternate
};

// Times `run` `repeat` times after `warmup`; with c.alternate, `repeat` pairs of A and B runs.
Timings time_runs(const BenchConfig& c, const std::function<void()>& run,
                  const std::function<void(int, double)>& on_run) {
  std::optional<EnvironmentSwitch> alternate;
  if (!c.alternate.empty()) {
    const auto [name, value] = alternate_assignment(c.alternate);
    alternate.emplace(name, value);
  }
  // The peak counts the warm-up too: a CUDA graph's memory is taken from its pool during the capture
  // (the first, warm-up call), and replays allocate nothing, so a peak of the timed runs alone
  // missed it (DDIM-50 of 256 images reported 188 MiB; PyTorch's eager loop, 1,533 MiB).
  reset_peak_memory(c.device);
  for (int i = 0; i < c.warmup; ++i) {
    run();
    if (alternate) {  // B's first-call work (its kernels' creation, its timings) stays out too
      alternate->set(true);
      run();
      alternate->set(false);
    }
  }
  synchronize(c.device);
  Timings t;
  for (int i = 0; i < c.repeat; ++i) {
    if (!alternate) {
      t.a.push_back(seconds_of(c, run));
    } else {
      // A B in even pairs, B A in odd ones: neither side always runs after the other
      const bool b_first = i % 2 == 1;
      alternate->set(b_first);
      const double first = seconds_of(c, run);
      alternate->set(!b_first);
      const double second = seconds_of(c, run);
      alternate->set(false);
      t.a.push_back(b_first ? second : first);
      t.b.push_back(b_first ? first : second);
    }
    if (on_run) on_run(i, t.a.back());
  }
  return t;
}

// The median over pairs of b[i] / a[i].
double median_ratio(const std::vector<double>& a, const std::vector<double>& b) {
  std::vector<double> ratios;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) ratios.push_back(b[i] / a[i]);
  return ratios.empty() ? 0.0 : median(ratios);
}

// Experiments on the GPU, switched by the environment so that bench/env_ab.py can time them side
// by side: DIFFUSE_CUDNN_BENCHMARK=1 lets cuDNN time its algorithms per shape (like
// torch.backends.cudnn.benchmark); DIFFUSE_BF16_WEIGHTS=1 casts the network to bf16 once for
// inference and sampling instead of running float32 weights under autocast. 0, 1 or unset.
bool env_flag(const char* name) { return env_switch(name, {"0", "1"}) == "1"; }

}  // namespace

BenchResult run_benchmark(const BenchConfig& c, const std::function<void(int, double)>& on_run) {
  if (c.batch_size < 1 || c.repeat < 1 || c.warmup < 0 || c.steps < 1) {
    throw std::invalid_argument("bench: batch size, repeat and steps must be positive");
  }
  if (!c.alternate.empty() && c.task == BenchTask::conv) {
    throw std::invalid_argument("bench --alternate: not with --what conv");
  }
  if (!c.alternate.empty() && cuda_graph_in_use(c) != CudaGraphScope::off) {
    // B's runs would replay what was captured under A's setting: B/A 1 whatever the switch does
    throw std::invalid_argument("bench --alternate: a CUDA graph keeps the setting it was captured under; "
                                "add --cuda-graph off");
  }
  // the experiments' switches read first, so that a mistyped one stops the bench before any work
  const bool cudnn_benchmark = env_flag("DIFFUSE_CUDNN_BENCHMARK");
  const bool bf16_weights_asked = env_flag("DIFFUSE_BF16_WEIGHTS");
  if (c.task == BenchTask::conv) {
    BenchResult r;
    r.config = c;
    r.gflops_per_second =
        measure_conv_gflops(c.device, c.precision, c.memory_format == MemoryFormat::channels_last, 1.0, c.conv_shape,
                            conv_kernels() == ConvKernels::onednn);
    return r;
  }
  const bool rgb = c.model == "ddpm-cifar10";
  const int64_t channels = c.in_channels > 0 ? c.in_channels : (rgb ? 3 : 1);
  const int64_t size = c.image_size > 0 ? c.image_size : (rgb ? 32 : 28);
  torch::manual_seed(0);
  auto config = reshaped(unet_config_by_name(c.model, channels, size), c.shape);
  UNet model(config);
  model->to(c.device);
  model->set_memory_format(c.memory_format);
  if (c.device.is_cuda() && cudnn_benchmark) at::globalContext().setBenchmarkCuDNN(true);
  // Inference in bf16 weights: the network cast once, autocast off (AutocastScope with fp32).
  const bool bf16_weights = c.task != BenchTask::train && c.precision == Precision::bf16 && bf16_weights_asked;
  const Precision autocast_precision = bf16_weights ? Precision::fp32 : c.precision;
  if (bf16_weights) model->to(torch::kBFloat16);
  GaussianDiffusion diffusion(NoiseSchedule(ScheduleConfig{}), Objective::eps, c.device);
  const auto opts = torch::dtype(torch::kFloat32).device(c.device);
  auto x0 = torch::rand({c.batch_size, channels, size, size}, opts) * 2 - 1;

  BenchResult r;
  r.config = c;
  r.parameters = model->parameter_count();
  r.forward_flops_per_image = unet_forward_flops(config);
  double flops_per_run = 0;
  Timings timings;

  if (c.task == BenchTask::train) {
    UNet ema_model(config);
    ema_model->to(c.device);
    ema_model->set_memory_format(c.memory_format);
    for (auto& p : ema_model->parameters()) p.set_requires_grad(false);
    AdamW optimizer(model->parameters(), AdamWOptions{});
    Ema ema(0.999);
    TrainStepOptions options;
    options.precision = c.precision;
    TrainStep step(model, ema_model, diffusion, optimizer, ema, options);
    model->train();
    timings = time_runs(c, [&] { step(x0, torch::Tensor(), 1e-4); }, on_run);
    flops_per_run = 3 * r.forward_flops_per_image * static_cast<double>(c.batch_size);  // backward ≈ 2 × forward
  } else if (c.task == BenchTask::infer) {
    model->eval();
    c10::InferenceMode inference;
    auto t = torch::randint(0, 1000, {c.batch_size}, torch::dtype(torch::kLong).device(c.device));
    timings = time_runs(c, [&] {
      AutocastScope autocast(c.device, autocast_precision);
      model->forward(x0, t);
    }, on_run);
    flops_per_run = r.forward_flops_per_image * static_cast<double>(c.batch_size);
  } else {
    model->eval();
    c10::InferenceMode inference;
    DdimSampler sampler(diffusion.schedule(), TimestepSpacing::leading, /*eta=*/0.0);
    Denoiser net = [&](const torch::Tensor& x, const torch::Tensor& t) {
      AutocastScope autocast(c.device, autocast_precision);
      return model->forward(x, t);
    };
    const auto graphs = cuda_graph_in_use(c);
    if (graphs == CudaGraphScope::network) net = replay_as_cuda_graph(net);
    auto loop = [&](const torch::Tensor& x_T) -> torch::Tensor {
      return sample_loop(diffusion, sampler, net, x_T, SampleOptions{c.steps, true}, c10::nullopt, StepCallback());
    };
    auto x_T = torch::randn_like(x0);
    if (graphs == CudaGraphScope::loop) {
      CudaGraphRunner graph(loop);
      timings = time_runs(c, [&] { graph(x_T); }, on_run);
    } else {
      timings = time_runs(c, [&] { loop(x_T); }, on_run);
    }
    flops_per_run = static_cast<double>(c.steps) * r.forward_flops_per_image * static_cast<double>(c.batch_size);
  }
  r.seconds = timings.a;
  r.median_seconds = median(r.seconds);
  if (!timings.b.empty()) {
    r.alternate_seconds = timings.b;
    r.alternate_median_seconds = median(timings.b);
    r.alternate_median_ratio = median_ratio(timings.a, timings.b);
  }
  r.images_per_second = static_cast<double>(c.batch_size) / r.median_seconds;
  r.gflops_per_second = flops_per_run / r.median_seconds / 1e9;
  r.peak_memory_bytes = peak_memory_bytes(c.device);
  return r;
}

nlohmann::json to_json(const BenchResult& r) {
  const auto& c = r.config;
  nlohmann::json j{{"model", c.model},
          {"what", to_string(c.task)},
          {"device", c.device.str()},
          {"precision", to_string(c.precision)},
          {"memory_format", to_string(c.memory_format)},
          {"batch_size", c.batch_size},
          {"steps", c.task == BenchTask::sample ? c.steps : 0},
          {"cuda_graph", to_string(cuda_graph_in_use(c))},
          {"threads", torch::get_num_threads()},
          {"parameters", r.parameters},
          {"forward_gflops_per_image", r.forward_flops_per_image / 1e9},
          {"seconds", r.seconds},
          {"median_seconds", r.median_seconds},
          {"images_per_second", r.images_per_second},
          {"achieved_gflops_per_second", r.gflops_per_second},
          {"peak_memory_mib", static_cast<double>(r.peak_memory_bytes) / (1024.0 * 1024.0)}};
  if (!c.alternate.empty()) {
    j["alternate"] = {{"setting", c.alternate},
                      {"seconds", r.alternate_seconds},
                      {"median_seconds", r.alternate_median_seconds},
                      {"median_ratio", r.alternate_median_ratio}};
  }
  if (c.task == BenchTask::conv) j["conv_shape"] = {c.conv_shape.batch, c.conv_shape.channels, c.conv_shape.size};
  return j;
}

}  // namespace diffuse
