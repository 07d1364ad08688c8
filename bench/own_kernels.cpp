// The project's own CPU kernels timed alone, each beside the route it replaced (or, for the own
// Winograd, the one it is timed against per shape), on the shapes of the `mnist` and
// `ddpm-cifar10` U-Nets at batch 16 (Google Benchmark):
//
//   build/diffuse_kernel_bench [--benchmark_filter=conv_in]
//                              [--benchmark_repetitions=5 --benchmark_report_aggregates_only=true]
//
// Each row is "<kernel>/<model>/<own|replaced>/<pass>": `own` the project's kernel, `replaced` the
// route it replaced (LibTorch's operators and the re-orders around them; for the concatenating
// norm, torch::cat followed by the same norm kernel). Debian's Google Benchmark prints a warning
// that it was built as DEBUG: that is the library's own loop, not the kernels timed.
//
// Forward alone, and forward with backward (the gradients a training step asks for, from a fixed
// ∂L/∂y). Inside a training step the inputs come from memory rather than from cache, so these
// times are lower bounds of what `diffuse bench --profile` shows; whether a kernel pays off in the
// step is what `diffuse bench --alternate` measures (docs/PERFORMANCE.md). Blocked tensors are
// blocked by this CPU's channel_block() (DIFFUSE_CHANNEL_BLOCK=8|16 to time the other).
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <algorithm>
#include <functional>
#include <string>
#include <thread>

#include "diffuse/runtime/blocked_conv_in.h"
#include "diffuse/runtime/blocked_conv_out.h"
#include "diffuse/runtime/blocked_layout.h"
#include "diffuse/runtime/device.h"
#include "diffuse/runtime/group_norm_silu.h"
#include "diffuse/runtime/large_block_cache.h"
#include "diffuse/runtime/onednn_conv.h"
#include "diffuse/util/environment.h"

namespace {

// One way of computing a layer's output: the call, the fixed ∂L/∂y the backward pass starts from
// (no sum and no ones-fill in the timing), and the tensors whose gradients a training step asks for.
struct Route {
  std::function<torch::Tensor()> run;
  torch::Tensor grad_y;
  std::vector<torch::Tensor> wrt;
};

// Times `pass` (which returns what it computed, so that nothing is optimised away).
void time_pass(benchmark::State& state, const std::function<std::vector<torch::Tensor>()>& pass) {
  for (auto _ : state) {
    auto out = pass();
    benchmark::DoNotOptimize(out.front().data_ptr());
  }
}

// A kernel and the route it replaced, forward alone (no autograd graph) and forward with
// backward, registered as "<what>/<model>/<own|replaced>/<forward|forward+backward>", the two
// routes of one pass one after the other (this host's speed drifts within minutes).
void register_pair(const std::string& what, const std::string& model, const Route& own, const Route& replaced) {
  const std::pair<const char*, Route> routes[] = {{"own", own}, {"replaced", replaced}};
  for (const auto& [who, route] : routes) {
    benchmark::RegisterBenchmark((what + "/" + model + "/" + who + "/forward").c_str(),
                                 [route = route](benchmark::State& state) {
                                   time_pass(state, [&] {
                                     torch::NoGradGuard no_grad;
                                     return std::vector<torch::Tensor>{route.run()};
                                   });
                                 })
        ->Unit(benchmark::kMillisecond);
  }
  for (const auto& [who, route] : routes) {
    benchmark::RegisterBenchmark((what + "/" + model + "/" + who + "/forward+backward").c_str(),
                                 [route = route](benchmark::State& state) {
                                   time_pass(state, [&] {
                                     return torch::autograd::grad({route.run()}, route.wrt, {route.grad_y});
                                   });
                                 })
        ->Unit(benchmark::kMillisecond);
  }
}

// conv_in: an NCHW image of `c` channels into `o` blocked channels (runtime/blocked_conv_in.h),
// against LibTorch's convolution followed by the re-order into the blocked layout. The noisy
// image needs no gradient in training: ∂L/∂W and ∂L/∂b only.
void register_conv_in(const std::string& model, int64_t c, int64_t o, int64_t size) {
  const auto x = torch::randn({16, c, size, size});
  const auto w = (torch::randn({o, c, 3, 3}) * 0.1).requires_grad_();
  const auto b = torch::zeros({o}).requires_grad_();
  const int64_t B = diffuse::channel_block();
  const auto grad_y = torch::randn({16, o / B, size, size, B});
  register_pair("conv_in", model, {[=] { return diffuse::conv_nchw_to_blocked(x, w, b); }, grad_y, {w, b}},
                {[=] { return diffuse::to_blocked(torch::conv2d(x, w, b, 1, 1)); }, grad_y, {w, b}});
}

// conv_out: `c` blocked channels into an NCHW image of `o` channels (runtime/blocked_conv_out.h),
// against the re-order to NCHW followed by LibTorch's convolution.
void register_conv_out(const std::string& model, int64_t c, int64_t o, int64_t size) {
  const int64_t B = diffuse::channel_block();
  const auto x5 = torch::randn({16, c / B, size, size, B}).requires_grad_();
  const auto w = (torch::randn({o, c, 3, 3}) * 0.1).requires_grad_();
  const auto b = torch::zeros({o}).requires_grad_();
  const auto grad_y = torch::randn({16, o, size, size});
  register_pair("conv_out", model, {[=] { return diffuse::conv_blocked_to_nchw(x5, w, b); }, grad_y, {x5, w, b}},
                {[=] { return torch::conv2d(diffuse::from_blocked(x5), w, b, 1, 1); }, grad_y, {x5, w, b}});
}

// GroupNorm + time shift + SiLU on blocked activations (runtime/group_norm_silu.h), against
// LibTorch's add, GroupNorm and SiLU on the same values in NCHW (no re-orders counted: the
// LibTorch route's input is already NCHW).
void register_group_norm_silu(const std::string& model, int64_t c, int64_t size, int64_t groups) {
  const int64_t B = diffuse::channel_block();
  const auto x5 = torch::randn({16, c / B, size, size, B}).requires_grad_();
  const auto x = diffuse::from_blocked(x5.detach()).requires_grad_();
  const auto shift = (torch::randn({16, c}) * 0.1).requires_grad_();
  const auto gamma = torch::ones({c}).requires_grad_(), beta = torch::zeros({c}).requires_grad_();
  const auto grad_y5 = torch::randn({16, c / B, size, size, B});
  register_pair(
      "group_norm_silu", model,
      {[=] { return diffuse::group_norm_silu_blocked(x5, shift, gamma, beta, groups, 1e-5); }, grad_y5,
       {x5, shift, gamma, beta}},
      {[=] { return torch::silu(torch::group_norm(x + shift.view({16, c, 1, 1}), groups, gamma, beta, 1e-5)); },
       diffuse::from_blocked(grad_y5), {x, shift, gamma, beta}});
}

// The up path's first norm of a block: cat(h, skip) inside the kernel
// (group_norm_silu_blocked_cat_and_input), against torch::cat followed by the same kernel on the
// concatenation. Both return {y, cat}; the backward pass gets ∂L/∂y only.
void register_cat_norm(const std::string& model, int64_t a_channels, int64_t b_channels, int64_t size,
                       int64_t groups) {
  const int64_t c = a_channels + b_channels;
  const int64_t B = diffuse::channel_block();
  const auto a = torch::randn({16, a_channels / B, size, size, B}).requires_grad_();
  const auto b = torch::randn({16, b_channels / B, size, size, B}).requires_grad_();
  const auto gamma = torch::ones({c}).requires_grad_(), beta = torch::zeros({c}).requires_grad_();
  const auto grad_y = torch::randn({16, c / B, size, size, B});
  register_pair(
      "cat_group_norm_silu", model,
      {[=] { return diffuse::group_norm_silu_blocked_cat_and_input(a, b, gamma, beta, groups, 1e-5).first; }, grad_y,
       {a, b, gamma, beta}},
      {[=] {
         return diffuse::group_norm_silu_blocked_and_input(torch::cat({a, b}, 1), gamma, beta, groups, 1e-5).first;
       },
       grad_y, {a, b, gamma, beta}});
}

// The own Winograd F(4×4, 3×3) (runtime/winograd_conv.h) on a blocked 3×3 convolution, against
// oneDNN's direct kernel on the same layout: every pass through onednn_conv_blocked with the
// algorithm forced (its choice for the backward passes is made at the forward call).
void register_winograd(const std::string& model, int64_t c, int64_t o, int64_t size) {
  if (!diffuse::onednn_conv_built()) return;
  const int64_t B = diffuse::channel_block();
  const auto x5 = torch::randn({16, c / B, size, size, B}).requires_grad_();
  const auto w = (torch::randn({o, c, 3, 3}) * 0.1).requires_grad_();
  const auto b = torch::zeros({o}).requires_grad_();
  const auto grad_y = torch::randn({16, o / B, size, size, B});
  auto forced = [=](const char* algorithm) {
    return [=] {
      const diffuse::EnvironmentSwitch own("DIFFUSE_OWN_WINOGRAD", "1", /*on=*/true),
          forced_algorithm("DIFFUSE_CONV_ALGORITHM", algorithm, /*on=*/true);
      return diffuse::onednn_conv_blocked(x5, w, b, 1);
    };
  };
  register_pair("winograd", model + "-" + std::to_string(c) + "-" + std::to_string(o) + "-" + std::to_string(size),
                {forced("winograd"), grad_y, {x5, w, b}}, {forced("direct"), grad_y, {x5, w, b}});
}

}  // namespace

int main(int argc, char** argv) {
  // the process settings `diffuse` makes at start-up (apps/diffuse/main.cpp)
  torch::set_num_threads(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  diffuse::use_single_threaded_blas();
  diffuse::keep_freed_memory_for_reuse();
  diffuse::cache_large_cpu_blocks();

  register_conv_in("mnist", 1, 32, 28);
  register_conv_in("ddpm-cifar10", 3, 128, 32);
  register_conv_out("mnist", 32, 1, 28);
  register_conv_out("ddpm-cifar10", 128, 3, 32);
  register_group_norm_silu("mnist", 32, 28, 8);
  register_group_norm_silu("ddpm-cifar10", 128, 32, 32);
  register_cat_norm("mnist", 64, 32, 28, 8);            // the up path's first block at 28×28
  register_cat_norm("ddpm-cifar10", 128, 128, 32, 32);  // the up path's last two blocks at 32×32
  register_winograd("mnist", 16, 16, 28);               // the main job's network (16 channels) at 28×28, 14×14, 7×7
  register_winograd("mnist", 48, 16, 28);
  register_winograd("mnist", 32, 32, 14);
  register_winograd("mnist", 64, 32, 7);
  register_winograd("ddpm-cifar10", 128, 128, 32);

  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  std::printf("threads: %d (torch)\n", torch::get_num_threads());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
