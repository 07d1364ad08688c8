#include "diffuse/runtime/onednn_conv.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string_view>
#include <tuple>
#include <vector>

#include "diffuse/runtime/blocked_layout.h"
#include "diffuse/runtime/gradient_wanted.h"
#include "diffuse/runtime/precision.h"
#include "diffuse/runtime/settings.h"
#include "diffuse/runtime/timing_cache.h"
#include "diffuse/runtime/winograd_conv.h"
#include "diffuse_build_config.h"

#if DIFFUSE_HAVE_ONEDNN
#include <ATen/record_function.h>
#include <oneapi/dnnl/dnnl.hpp>

#include "onednn_engine.h"
#endif

namespace diffuse {

namespace {
std::atomic<ConvKernels> g_conv_kernels{ConvKernels::aten};

// The kernel oneDNN picks for one typical 3×3 shape, and whether it is a Winograd kernel: what
// oneDNN has for this CPU (2.6: Winograd on AVX-512 only).
std::string typical_conv3x3_implementation() { return onednn_conv3x3_implementation(16, 64, 64, 32, 32); }
bool names_winograd(const std::string& implementation) { return implementation.find("wino") != std::string::npos; }
}  // namespace

std::string to_string(ConvKernels k) { return k == ConvKernels::aten ? "aten" : "onednn"; }

ConvKernels conv_kernels_from_string(const std::string& name) {
  if (name == "aten") return ConvKernels::aten;
  if (name == "onednn") return ConvKernels::onednn;
  throw std::invalid_argument("unknown convolution kernels '" + name + "' (expected aten, onednn or auto)");
}

bool onednn_conv_built() { return DIFFUSE_HAVE_ONEDNN != 0; }

void set_conv_kernels(ConvKernels kernels) {
  if (kernels == ConvKernels::onednn && !onednn_conv_built()) {
    throw std::invalid_argument("oneDNN convolutions: this build has no oneDNN (install libdnnl-dev and rebuild)");
  }
  g_conv_kernels = kernels;
}

ConvKernels conv_kernels() { return g_conv_kernels; }

#if DIFFUSE_HAVE_ONEDNN
namespace {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

using onednn::cpu_engine;

// One convolution shape's primitives, created once (oneDNN generates their code at creation).
struct ConvPlan {
  memory::desc src_user, weights_oihw, bias_x, dst_user;  // the callers' layouts: NCHW, or nChw16c/8c when blocked
  dnnl::convolution_forward::primitive_desc forward_pd;
  dnnl::convolution_forward forward;
  // Training plans only: the two backward passes, built against the forward's layouts.
  dnnl::convolution_backward_data::primitive_desc backward_data_pd;
  dnnl::convolution_backward_data backward_data;
  dnnl::convolution_backward_weights::primitive_desc backward_weights_pd;
  dnnl::convolution_backward_weights backward_weights;
};

// How a call's activations lie in memory, and their precision: float32 NCHW or channel-blocked
// (runtime/blocked_layout.h's nChw16c or nChw8c), or bf16 channels-last (NHWC), where oneDNN's bf16 kernels
// (AMX, AVX512-BF16) read and write the tensors as they are.
enum class Activations { nchw_f32, blocked_f32, nhwc_bf16 };

// A convolution's shape: k×k kernel, stride, padding k/2 (every convolution of the U-Net), and
// its activations' layout.
struct OneDnnConvShape {
  int64_t n, c, o, h, w, k, stride;
  bool training;
  Activations layout;
  bool weights_ohwi = false;  // the weights channels-last (UNet::set_memory_format), not OIHW
  int64_t block = 0;          // channels per block where blocked: 16 or 8
  bool blocked() const { return layout == Activations::blocked_f32; }
  int64_t out_h() const { return (h + 2 * (k / 2) - k) / stride + 1; }
  int64_t out_w() const { return (w + 2 * (k / 2) - k) / stride + 1; }
  auto key() const { return std::make_tuple(n, c, o, h, w, k, stride, training, layout, weights_ohwi, block); }
  bool operator<(const OneDnnConvShape& other) const { return key() < other.key(); }
};

ConvPlan make_plan(const OneDnnConvShape& s, dnnl::algorithm algorithm) {
  const bool bf16 = s.layout == Activations::nhwc_bf16;
  const auto blocked = s.block == 8 ? tag::aBcd8b : tag::aBcd16b;
  const auto activations = s.blocked() ? blocked : bf16 ? tag::nhwc : tag::nchw;
  const auto compute = bf16 ? dt::bf16 : dt::f32;  // the activations' and the kernel's weights' type
  const memory::dims src_dims{s.n, s.c, s.h, s.w}, weights_dims{s.o, s.c, s.k, s.k},
      dst_dims{s.n, s.o, s.out_h(), s.out_w()};
  ConvPlan p;
  p.src_user = memory::desc(src_dims, compute, activations);
  // the float32 master weights (and their gradient), as they lie
  p.weights_oihw = memory::desc(weights_dims, dt::f32, s.weights_ohwi ? tag::ohwi : tag::oihw);
  p.bias_x = memory::desc({s.o}, dt::f32, tag::x);
  p.dst_user = memory::desc(dst_dims, compute, activations);
  // format `any`: oneDNN picks the layouts its kernel wants (nChw16c or nChw8c, Winograd weights).
  // bf16 activations stay NHWC: there oneDNN runs its AMX kernels (brgconv), faster than its bf16
  // kernels on nChw16c (docs/PERFORMANCE.md).
  const memory::desc src_any = bf16 ? p.src_user : memory::desc(src_dims, dt::f32, tag::any),
                     dst_any = bf16 ? p.dst_user : memory::desc(dst_dims, dt::f32, tag::any),
                     weights_any(weights_dims, compute, tag::any),
                     // ∂L/∂W in float32 also from bf16 activations: it is added into float32 weights
                     diff_weights_any(weights_dims, dt::f32, tag::any);
  const memory::dims stride{s.stride, s.stride}, pad{s.k / 2, s.k / 2};
  // forward_training also without gradients: oneDNN's Winograd forward_inference kernel is much
  // slower on the U-Nets' shapes, slowest on small images.
  const auto prop = dnnl::prop_kind::forward_training;
  p.forward_pd = dnnl::convolution_forward::primitive_desc(
      dnnl::convolution_forward::desc(prop, algorithm, src_any, weights_any, p.bias_x, dst_any, stride, pad, pad),
      cpu_engine());
  p.forward = dnnl::convolution_forward(p.forward_pd);
  if (s.training) {
    p.backward_data_pd = dnnl::convolution_backward_data::primitive_desc(
        dnnl::convolution_backward_data::desc(algorithm, src_any, weights_any, dst_any, stride, pad, pad), cpu_engine(),
        p.forward_pd);
    p.backward_data = dnnl::convolution_backward_data(p.backward_data_pd);
    p.backward_weights_pd = dnnl::convolution_backward_weights::primitive_desc(
        dnnl::convolution_backward_weights::desc(algorithm, src_any, diff_weights_any, p.bias_x, dst_any, stride, pad,
                                                 pad),
        cpu_engine(), p.forward_pd);
    p.backward_weights = dnnl::convolution_backward_weights(p.backward_weights_pd);
  }
  return p;
}

// The cached plan for this shape: with `winograd`, Winograd where oneDNN implements it here (3×3,
// stride 1, AVX-512), else direct. A primitive splits its work among the threads there were when
// it was created, so plans are kept per thread count (a run may change it: util/cpu_sharing.h).
const ConvPlan& plan_for(const OneDnnConvShape& shape, bool winograd) {
  static std::mutex mutex;
  static std::map<std::tuple<OneDnnConvShape, bool, int>, std::unique_ptr<ConvPlan>> plans;
  std::lock_guard<std::mutex> lock(mutex);
  auto& slot = plans[{shape, winograd, at::get_num_threads()}];
  if (!slot) {
    try {
      if (winograd) slot = std::make_unique<ConvPlan>(make_plan(shape, dnnl::algorithm::convolution_winograd));
    } catch (const dnnl::error&) {  // no Winograd kernel for this CPU or shape
    }
    if (!slot) slot = std::make_unique<ConvPlan>(make_plan(shape, dnnl::algorithm::convolution_direct));
  }
  return *slot;
}

// oneDNN memory over a tensor's storage (no copy).
memory wrap(const memory::desc& desc, const torch::Tensor& t) { return memory(desc, cpu_engine(), t.data_ptr()); }

// Byte buffers for one call's blocked copies, reused from call to call on this thread (and kept:
// at most four, each as large as the largest copy seen): a fresh multi-megabyte allocation comes
// from mmap and pays a page fault per 4 KiB on first touch, which measured more than the reorder
// that fills it. Slot i of a call is the i-th buffer it asks for; a call has finished with them
// (stream.wait()) before it returns.
class Scratch {
 public:
  void* take(size_t bytes) {
    thread_local std::vector<torch::Tensor> slots;
    if (next_ == slots.size()) slots.emplace_back();
    auto& slot = slots[next_++];
    if (!slot.defined() || static_cast<size_t>(slot.numel()) < bytes) {
      slot = torch::empty({static_cast<int64_t>(bytes)}, torch::kUInt8);
    }
    return slot.data_ptr();
  }

 private:
  size_t next_ = 0;
};

// `user` in the layout `want`: itself where the layouts agree, else a reordered copy in scratch.
memory in_layout(const memory& user, const memory::desc& want, dnnl::stream& stream, Scratch& scratch) {
  if (user.get_desc() == want) return user;
  memory source = user, converted(want, cpu_engine(), scratch.take(want.get_size()));
  dnnl::reorder(source, converted).execute(stream, source, converted);
  return converted;
}

// Memory in the primitive's layout `produced` to write a result into, and the reorder into the
// tensor `out` afterwards (nothing to do where the layouts agree).
struct Output {
  memory target, user;
  void finish(dnnl::stream& stream) {
    if (target.get_data_handle() != user.get_data_handle()) dnnl::reorder(target, user).execute(stream, target, user);
  }
};
Output output_in(const memory::desc& produced, const memory::desc& user_desc, const torch::Tensor& out, Scratch& scratch) {
  Output o;
  o.user = wrap(user_desc, out);
  o.target = produced == user_desc ? o.user : memory(produced, cpu_engine(), scratch.take(produced.get_size()));
  return o;
}

// x: [N, C, H, W] (float32 NCHW, or bf16 channels-last), or [N, C/B, H, W, B] when blocked;
// weight: [O, C, k, k].
OneDnnConvShape shape_of(const torch::Tensor& x, const torch::Tensor& weight, int64_t stride, bool training) {
  const bool blocked = x.dim() == 5;
  const auto layout = blocked ? Activations::blocked_f32
                      : x.scalar_type() == torch::kBFloat16 ? Activations::nhwc_bf16
                                                            : Activations::nchw_f32;
  return OneDnnConvShape{x.size(0),
                         blocked ? x.size(1) * x.size(4) : x.size(1),
                         weight.size(0),
                         x.size(2),
                         x.size(3),
                         weight.size(2),
                         stride,
                         training,
                         layout,
                         !weight.is_contiguous() && weight.is_contiguous(torch::MemoryFormat::ChannelsLast),
                         blocked ? x.size(4) : 0};
}

// The weights as oneDNN reads them: OIHW or channels-last (OHWI) as they lie, else an OIHW copy.
torch::Tensor weights_as_laid(const torch::Tensor& weight) {
  return weight.is_contiguous(torch::MemoryFormat::ChannelsLast) ? weight : weight.contiguous();
}

// An uninitialised output of this shape, in its layout.
torch::Tensor empty_output(const OneDnnConvShape& s, const torch::TensorOptions& options) {
  if (s.blocked()) return torch::empty({s.n, s.o / s.block, s.out_h(), s.out_w(), s.block}, options);
  const auto format = s.layout == Activations::nhwc_bf16 ? torch::MemoryFormat::ChannelsLast : torch::MemoryFormat::Contiguous;
  return torch::empty({s.n, s.o, s.out_h(), s.out_w()}, options.memory_format(format));
}

// Whether oneDNN has a Winograd kernel for this CPU at all.
bool onednn_has_winograd() {
  static const bool has = names_winograd(typical_conv3x3_implementation());
  return has;
}

// Whether a Winograd pass of this shape runs the own F(4×4, 3×3) (runtime/winograd_conv.h)
// instead of oneDNN's: blocked float32 3×3 stride-1 convolutions on a CPU where oneDNN has no
// Winograd kernel, or everywhere under DIFFUSE_OWN_WINOGRAD=1 (to test and measure it where
// oneDNN has one).
bool own_winograd_for(const OneDnnConvShape& s) {
  return s.blocked() && s.k == 3 && s.stride == 1 && s.o % s.block == 0 &&
         (!onednn_has_winograd() || runtime_settings().own_winograd);
}

// Whether some Winograd kernel, oneDNN's or the own, takes this shape.
bool winograd_for(const OneDnnConvShape& s) { return onednn_has_winograd() || own_winograd_for(s); }

torch::Tensor run_forward(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                          int64_t stride, bool training, bool winograd) {
  RECORD_FUNCTION("diffuse::onednn_conv", std::vector<c10::IValue>({x}));
  const auto shape = shape_of(x, weight, stride, training);
  if (winograd && own_winograd_for(shape)) return winograd_conv3x3_blocked(x, weight, bias);
  const ConvPlan& plan = plan_for(shape, winograd);
  dnnl::stream stream(cpu_engine());
  Scratch scratch;
  auto y = empty_output(shape, x.options());
  auto b = bias.defined() ? bias.contiguous() : torch::zeros({shape.o}, weight.options());
  auto src = in_layout(wrap(plan.src_user, x), plan.forward_pd.src_desc(), stream, scratch);
  auto wei = in_layout(wrap(plan.weights_oihw, weight), plan.forward_pd.weights_desc(), stream, scratch);
  auto dst = output_in(plan.forward_pd.dst_desc(), plan.dst_user, y, scratch);
  plan.forward.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_BIAS, wrap(plan.bias_x, b)},
                                {DNNL_ARG_DST, dst.target}});
  dst.finish(stream);
  stream.wait();
  return y;
}

// ∂L/∂x = conv_transpose(∂L/∂y, W); ∂L/∂W = Σ_n x ⋆ ∂L/∂y; ∂L/∂b = Σ_{n,h,w} ∂L/∂y.
// Each pass with its own algorithm: Winograd's backward-weights pass can lose where its other
// passes win.
std::vector<torch::Tensor> run_backward(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& grad_y,
                                        int64_t stride, bool winograd_data, bool winograd_weights, bool want_x,
                                        bool want_weights) {
  RECORD_FUNCTION("diffuse::onednn_conv_backward", std::vector<c10::IValue>({grad_y}));
  const auto shape = shape_of(x, weight, stride, /*training=*/true);
  // the passes the own Winograd takes, then oneDNN's for the rest
  const bool own_data = want_x && winograd_data && own_winograd_for(shape);
  const bool own_weights = want_weights && winograd_weights && own_winograd_for(shape);
  if (own_data || own_weights) {
    auto rest = run_backward(x, weight, grad_y, stride, winograd_data, winograd_weights, want_x && !own_data,
                             want_weights && !own_weights);
    if (own_data) rest[0] = winograd_conv3x3_blocked_backward_data(grad_y, weight);
    if (own_weights) std::tie(rest[1], rest[2]) = winograd_conv3x3_blocked_backward_weights(x, grad_y);
    return rest;
  }
  if (!want_x && !want_weights) return {torch::Tensor(), torch::Tensor(), torch::Tensor()};
  const ConvPlan& data_plan = plan_for(shape, winograd_data);
  const ConvPlan& weights_plan = plan_for(shape, winograd_weights);
  dnnl::stream stream(cpu_engine());
  Scratch scratch;
  const auto grad_y_user = wrap(data_plan.dst_user, grad_y);
  torch::Tensor grad_x, grad_w, grad_b;
  memory diff_dst_for_data;  // ∂L/∂y in the backward-data layout, reused below where it is the same
  if (want_x) {
    grad_x = torch::empty_like(x);
    diff_dst_for_data = in_layout(grad_y_user, data_plan.backward_data_pd.diff_dst_desc(), stream, scratch);
    auto wei = in_layout(wrap(data_plan.weights_oihw, weight), data_plan.backward_data_pd.weights_desc(), stream, scratch);
    auto diff_src = output_in(data_plan.backward_data_pd.diff_src_desc(), data_plan.src_user, grad_x, scratch);
    data_plan.backward_data.execute(stream, {{DNNL_ARG_DIFF_DST, diff_dst_for_data},
                                        {DNNL_ARG_WEIGHTS, wei},
                                        {DNNL_ARG_DIFF_SRC, diff_src.target}});
    diff_src.finish(stream);
  }
  if (want_weights) {
    grad_w = torch::empty_like(weight);
    grad_b = torch::empty({weight.size(0)}, weight.options());
    auto src = in_layout(wrap(weights_plan.src_user, x), weights_plan.backward_weights_pd.src_desc(), stream, scratch);
    const auto& want = weights_plan.backward_weights_pd.diff_dst_desc();
    auto diff_dst = want_x && diff_dst_for_data.get_desc() == want ? diff_dst_for_data
                                                                   : in_layout(grad_y_user, want, stream, scratch);
    auto diff_w = output_in(weights_plan.backward_weights_pd.diff_weights_desc(), weights_plan.weights_oihw, grad_w, scratch);
    weights_plan.backward_weights.execute(stream, {{DNNL_ARG_SRC, src},
                                           {DNNL_ARG_DIFF_DST, diff_dst},
                                           {DNNL_ARG_DIFF_WEIGHTS, diff_w.target},
                                           {DNNL_ARG_DIFF_BIAS, wrap(weights_plan.bias_x, grad_b)}});
    diff_w.finish(stream);
  }
  stream.wait();
  return {grad_x, grad_w, grad_b};
}

// Seconds of `a` and of `b`, each the best of three runs taken in turn (a, b, a, b, …) after one
// warm-up of each, so that a machine whose speed drifts treats both alike.
template <class A, class B>
std::pair<double, double> best_seconds_in_turn(A&& a, B&& b) {
  a();
  b();
  auto seconds = [](auto& run) {
    const auto t0 = std::chrono::steady_clock::now();
    run();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  double best_a = 1e30, best_b = 1e30;
  for (int i = 0; i < 3; ++i) {
    best_a = std::min(best_a, seconds(a));
    best_b = std::min(best_b, seconds(b));
  }
  return {best_a, best_b};
}

// The batch the per-shape timings below run at: the caller's, or as many images (at least 8) as
// keep the wider of input and output under 8 MiB. A batch that fits the caches can crown a kernel
// that loses at the real one, which does not (the own Winograd on an AVX2 EPYC, timed on 8 images:
// 10 % slower training steps at 64); more images than that only lengthen the first call's wait.
int64_t timing_batch(const OneDnnConvShape& s) {
  constexpr int64_t kBudgetBytes = int64_t{8} << 20;
  const int64_t bytes_per_image = std::max<int64_t>(1, std::max(s.c, s.o) * s.h * s.w * int64_t{sizeof(float)});
  return std::min(s.n, std::max<int64_t>(8, kBudgetBytes / bytes_per_image));
}

// Winograd (true) or direct (false) for each pass of one convolution shape.
struct PassAlgorithms {
  bool forward = true, backward_data = true, backward_weights = true;
};

// Choices as the timing cache keeps them: small integers.
int64_t encode(bool b) { return b ? 1 : 0; }
int64_t encode(const PassAlgorithms& a) {
  return (a.forward ? 1 : 0) | (a.backward_data ? 2 : 0) | (a.backward_weights ? 4 : 0);
}
void decode(int64_t v, bool& b) { b = v != 0; }
void decode(int64_t v, PassAlgorithms& a) { a = {(v & 1) != 0, (v & 2) != 0, (v & 4) != 0}; }

// The timing cache's key of a choice: what was timed against what, the shape, and the threads it
// ran on (the winner can change with them).
std::string choice_key(const char* timed, const OneDnnConvShape& s) {
  static const char* const layouts[] = {"nchw_f32", "blocked_f32", "nhwc_bf16"};
  std::ostringstream key;
  key << timed << " " << layouts[static_cast<int>(s.layout)] << (s.blocked() ? " b" + std::to_string(s.block) : "")
      << " n" << s.n << " c" << s.c << " o" << s.o << " " << s.h << "x" << s.w << " k" << s.k << " s" << s.stride
      << (s.training ? " training" : " inference") << (s.weights_ohwi ? " ohwi" : "") << " threads"
      << at::get_num_threads();
  return key.str();
}

// A choice per shape, decided once by a timing and remembered for the process, and across
// processes by the timing cache (runtime/timing_cache.h). Both are keyed by what was timed and the
// thread count too, so that a switch flipped inside a process (bench --alternate
// DIFFUSE_OWN_WINOGRAD=1) or another thread count times its own winner instead of reusing the
// other's. The lock is not held while timing; two threads meeting a new shape may both time it.
template <class Choice>
class ShapeChoices {
 public:
  // `timed`: what the timing compares, a string literal (a name that outlives the map)
  template <class Decide>
  Choice get(const OneDnnConvShape& shape, const char* timed, Decide&& decide) {
    const Key process_key{shape, std::string_view(timed), at::get_num_threads()};
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (auto it = choices_.find(process_key); it != choices_.end()) return it->second;
    }
    Choice choice;
    auto* cache = process_timing_cache();
    const std::string key = cache ? choice_key(timed, shape) : std::string();
    if (const auto kept = cache ? cache->find(key) : std::nullopt) {
      decode(*kept, choice);
    } else {
      choice = decide();
      if (cache) cache->store(key, encode(choice));
    }
    std::lock_guard<std::mutex> lock(mutex_);
    return choices_[process_key] = choice;
  }

 private:
  using Key = std::tuple<OneDnnConvShape, std::string_view, int>;
  std::mutex mutex_;
  std::map<Key, Choice> choices_;
};

// Data without the random generator: timing must not move the caller's random stream.
torch::Tensor ramp(const std::vector<int64_t>& shape) {
  int64_t count = 1;
  for (auto d : shape) count *= d;
  return torch::linspace(-1.0, 1.0, count).reshape(shape);
}

// Winograd or direct for each pass of this shape. On blocked activations both read and write the
// same layout, and which is faster depends on the image size and the pass (Winograd's 4×4 tiles
// pay off on wide images; direct wins at 7×7 and some 14×14 shapes), so each blocked
// 3×3 stride-1 shape is timed once, per pass (forward alone for inference shapes). NCHW calls take
// Winograd: conv3x3 times them against ATen instead.
PassAlgorithms algorithms_for(const OneDnnConvShape& shape) {
  if (shape.layout == Activations::nhwc_bf16) return {false, false, false};  // oneDNN has no bf16 Winograd
  if (!shape.blocked() || shape.k != 3 || shape.stride != 1) return {};
  // no Winograd kernel at all: none in oneDNN for this CPU, and a build without the own
  if (!winograd_for(shape)) return {false, false, false};
  // DIFFUSE_CONV_ALGORITHM=direct or winograd: every pass of every shape that one, to measure
  // what the per-pass timing gains
  const auto forced = runtime_settings().conv_algorithm;
  if (forced == ConvAlgorithmChoice::direct) return {false, false, false};
  if (forced == ConvAlgorithmChoice::winograd) return {};
  static ShapeChoices<PassAlgorithms> choices;
  const char* timed = own_winograd_for(shape) ? "own-winograd-or-direct" : "winograd-or-direct";
  return choices.get(shape, timed, [&] {
    const int64_t b = shape.block, n = timing_batch(shape);
    const auto x = ramp({n, shape.c / b, shape.h, shape.w, b}), weight = ramp({shape.o, shape.c, 3, 3}) * 0.1,
               bias = torch::zeros({shape.o}), grad_y = ramp({n, shape.o / b, shape.h, shape.w, b});
    // whether the first (Winograd) of the two timings is the smaller
    auto winograd_faster = [](auto&& run) {
      const auto [winograd_s, direct_s] = best_seconds_in_turn([&] { run(true); }, [&] { run(false); });
      return winograd_s < direct_s;
    };
    PassAlgorithms a;
    a.forward = winograd_faster([&](bool w) { run_forward(x, weight, bias, 1, shape.training, w); });
    if (shape.training) {
      a.backward_data = winograd_faster([&](bool w) { run_backward(x, weight, grad_y, 1, w, w, true, false); });
      a.backward_weights = winograd_faster([&](bool w) { run_backward(x, weight, grad_y, 1, w, w, false, true); });
    }
    return a;
  });
}

struct OneDnnConvFunction : public torch::autograd::Function<OneDnnConvFunction> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& weight,
                               const torch::Tensor& bias, int64_t stride, bool has_bias) {
    ctx->save_for_backward({x, weight});
    const auto algorithms = algorithms_for(shape_of(x, weight, stride, /*training=*/true));
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["winograd_data"] = algorithms.backward_data;
    ctx->saved_data["winograd_weights"] = algorithms.backward_weights;
    ctx->saved_data["has_bias"] = has_bias;
    return run_forward(x, weight, bias, stride, /*training=*/true, algorithms.forward);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    // ∂L/∂y in x's layout and precision (bf16 channels-last for a bf16 call)
    auto g = run_backward(saved[0], saved[1], gradient_like(saved[0], grads[0]), ctx->saved_data["stride"].toInt(),
                          ctx->saved_data["winograd_data"].toBool(), ctx->saved_data["winograd_weights"].toBool(),
                          ctx->needs_input_grad(0), ctx->needs_input_grad(1) || (has_bias && ctx->needs_input_grad(2)));
    return {g[0], g[1], has_bias ? g[2] : torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

// Forward, through the autograd function where a gradient is wanted. x is checked by the caller.
torch::Tensor convolve(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias, int64_t stride) {
  TORCH_CHECK(weight.dim() == 4 && weight.size(2) == weight.size(3) && weight.size(2) % 2 == 1 &&
                  weight.scalar_type() == torch::kFloat32,
              "onednn convolution: weight must be float32 [O, C, k, k] with k odd, got ", weight.sizes());
  TORCH_CHECK(stride >= 1, "onednn convolution: stride must be positive, got ", stride);
  TORCH_CHECK(!bias.defined() || (bias.dim() == 1 && bias.size(0) == weight.size(0)),
              "onednn convolution: bias must be [O]");
  if (!gradient_wanted({x, weight, bias})) {
    return run_forward(x, weights_as_laid(weight), bias, stride, false,
                       algorithms_for(shape_of(x, weight, stride, false)).forward);
  }
  // autograd functions take no undefined tensors: a missing bias travels as zeros without a gradient
  const auto b = bias.defined() ? bias : torch::zeros({weight.size(0)}, weight.options());
  return OneDnnConvFunction::apply(x, weights_as_laid(weight), b, stride, bias.defined());
}

}  // namespace
#endif  // DIFFUSE_HAVE_ONEDNN

torch::Tensor onednn_conv3x3(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias) {
#if DIFFUSE_HAVE_ONEDNN
  TORCH_CHECK(x.dim() == 4 && x.device().is_cpu() && x.scalar_type() == torch::kFloat32,
              "onednn_conv3x3: x must be a float32 [N, C, H, W] CPU tensor");
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == x.size(1), "onednn_conv3x3: weight must be [O, ", x.size(1),
              ", 3, 3], got ", weight.sizes());
  TORCH_CHECK(weight.size(2) == 3, "onednn_conv3x3: weight must be [O, C, 3, 3], got ", weight.sizes());
  return convolve(x.contiguous(), weight, bias, 1);
#else
  throw std::runtime_error("onednn_conv3x3: this build has no oneDNN (install libdnnl-dev and rebuild)");
#endif
}

torch::Tensor onednn_conv_blocked(const torch::Tensor& x5, const torch::Tensor& weight, const torch::Tensor& bias,
                                  int64_t stride) {
#if DIFFUSE_HAVE_ONEDNN
  check_blocked_float32("onednn_conv_blocked", "x", x5);
  const int64_t b = x5.size(4);
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == x5.size(1) * b && weight.size(0) % b == 0,
              "onednn_conv_blocked: weight must be [O, ", x5.size(1) * b, ", k, k] with O a multiple of ", b, ", got ",
              weight.sizes());
  return convolve(x5.contiguous(), weight, bias, stride);
#else
  throw std::runtime_error("onednn_conv_blocked: this build has no oneDNN (install libdnnl-dev and rebuild)");
#endif
}

torch::Tensor onednn_conv_nhwc_bf16(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                                    int64_t stride) {
#if DIFFUSE_HAVE_ONEDNN
  TORCH_CHECK(x.dim() == 4 && x.device().is_cpu() &&
                  (x.scalar_type() == torch::kBFloat16 || x.scalar_type() == torch::kFloat32),
              "onednn_conv_nhwc_bf16: x must be a bf16 or float32 [N, C, H, W] CPU tensor, got ", x.sizes(), " ",
              x.scalar_type());
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == x.size(1), "onednn_conv_nhwc_bf16: weight must be [O, ", x.size(1),
              ", k, k], got ", weight.sizes());
  // a float32 x is cast here, as autocast would cast it for LibTorch's convolution
  return convolve(x.to(torch::kBFloat16).contiguous(torch::MemoryFormat::ChannelsLast), weight, bias, stride);
#else
  throw std::runtime_error("onednn_conv_nhwc_bf16: this build has no oneDNN (install libdnnl-dev and rebuild)");
#endif
}

#if DIFFUSE_HAVE_ONEDNN
namespace {

// Whether oneDNN creates the three passes of a bf16 NHWC convolution here. The CPU's flags can
// say bf16 while oneDNN still refuses: ONEDNN_MAX_CPU_ISA capped below avx512_core_bf16, or an OS
// or hypervisor that has not enabled the registers; then every bf16 call would throw "could not
// create a primitive descriptor iterator".
bool onednn_creates_bf16_convolutions() {
  try {
    make_plan(OneDnnConvShape{1, 16, 16, 4, 4, 3, 1, /*training=*/true, Activations::nhwc_bf16},
              dnnl::algorithm::convolution_direct);
    return true;
  } catch (const dnnl::error&) {
    return false;
  }
}

}  // namespace
#endif

bool onednn_bf16_available() {
#if DIFFUSE_HAVE_ONEDNN
  static const bool available =
      cpu_has_native_bf16() && runtime_settings().onednn_bf16 && onednn_creates_bf16_convolutions();
  return available;
#else
  return false;
#endif
}

bool nhwc_bf16_conv_applies(const torch::Tensor& x, const torch::Tensor& weight) {
  return onednn_bf16_available() && x.device().is_cpu() && x.dim() == 4 &&
         (x.scalar_type() == torch::kBFloat16 || x.scalar_type() == torch::kFloat32) && x.size(1) > 1 &&
         x.is_contiguous(torch::MemoryFormat::ChannelsLast) && autocast_enabled(torch::kCPU) &&
         weight.scalar_type() == torch::kFloat32;
}

int64_t channel_block() {
  if (const int64_t asked = runtime_settings().channel_block) return asked;
  static const int64_t native = [] {
#if DIFFUSE_HAVE_ONEDNN
    // the source layout oneDNN's direct kernel asks for on a typical shape: nChw8c with AVX2 (and
    // SSE4.1) kernels, nChw16c with AVX-512 ones
    const OneDnnConvShape typical{16, 64, 64, 32, 32, 3, 1, false, Activations::nchw_f32};
    const auto wants = plan_for(typical, /*winograd=*/false).forward_pd.src_desc();
    return wants == memory::desc({16, 64, 32, 32}, dt::f32, tag::aBcd8b) ? int64_t{8} : int64_t{16};
#else
    return int64_t{16};
#endif
  }();
  return native;
}

std::string onednn_conv3x3_implementation(int64_t batch, int64_t in_channels, int64_t out_channels, int64_t height,
                                          int64_t width) {
#if DIFFUSE_HAVE_ONEDNN
  // the forward-only plan: the same kernel, without generating the two backward passes' code
  return plan_for(OneDnnConvShape{batch, in_channels, out_channels, height, width, 3, 1, false, Activations::nchw_f32}, true)
      .forward_pd.impl_info_str();
#else
  return "none (built without oneDNN)";
#endif
}

#if DIFFUSE_HAVE_ONEDNN
namespace {

// Whether oneDNN beats ATen on this shape, timed once per shape and kind of call (forward only,
// or forward and both backward passes): Winograd wins big on wide images (2–4× at 16×16 and
// 32×32) and loses on the smallest (4×4 with 256 channels), and where the line lies depends on
// the CPU, so a fixed rule would be wrong somewhere. Timed on timing_batch's images.
bool onednn_wins(int64_t n, int64_t c, int64_t o, int64_t h, int64_t w, bool training) {
  static ShapeChoices<bool> onednn_faster;
  const OneDnnConvShape shape{n, c, o, h, w, 3, 1, training, Activations::nchw_f32};
  return onednn_faster.get(shape, "onednn-or-aten", [&] {
    const int64_t m = timing_batch(shape);
    auto x = ramp({m, c, h, w}), weight = ramp({o, c, 3, 3}) * 0.1, bias = torch::zeros({o}),
         grad_y = ramp({m, o, h, w});
    double aten = 0, onednn = 0;
    if (training) {
      torch::AutoGradMode grad(true);
      x.requires_grad_();
      weight.requires_grad_();
      bias.requires_grad_();
      std::tie(aten, onednn) = best_seconds_in_turn([&] { torch::conv2d(x, weight, bias, 1, 1).backward(grad_y); },
                                                    [&] { onednn_conv3x3(x, weight, bias).backward(grad_y); });
    } else {
      torch::NoGradGuard no_grad;
      std::tie(aten, onednn) = best_seconds_in_turn([&] { torch::conv2d(x, weight, bias, 1, 1); },
                                                    [&] { onednn_conv3x3(x, weight, bias); });
    }
    return onednn < aten;
  });
}

}  // namespace
#endif  // DIFFUSE_HAVE_ONEDNN

namespace {

// Whether x may take the oneDNN path at all: conv_kernels() is onednn and x is a float32
// contiguous NCHW CPU tensor outside autocast.
bool onednn_may_take(const torch::Tensor& x) {
  return DIFFUSE_HAVE_ONEDNN && g_conv_kernels == ConvKernels::onednn && x.device().is_cpu() && x.dim() == 4 &&
         x.scalar_type() == torch::kFloat32 && x.is_contiguous() && !autocast_enabled(torch::kCPU);
}

}  // namespace

bool blocked_activations_apply(const torch::Tensor& x, std::initializer_list<int64_t> channels) {
  if (!onednn_may_take(x)) return false;
  // DIFFUSE_BLOCKED_ACTIVATIONS=0 turns the blocked path off, to measure what it gains
  if (!runtime_settings().blocked_activations) return false;
  for (auto c : channels) {
    if (c % channel_block() != 0) return false;
  }
  return true;
}

torch::Tensor conv3x3(torch::nn::Conv2d& conv, const torch::Tensor& x) {
#if DIFFUSE_HAVE_ONEDNN
  if (onednn_may_take(x) && conv->weight.scalar_type() == torch::kFloat32 && conv->weight.is_contiguous()) {
    const bool training = gradient_wanted({x, conv->weight});
    if (onednn_wins(x.size(0), x.size(1), conv->weight.size(0), x.size(2), x.size(3), training)) {
      return onednn_conv3x3(x, conv->weight, conv->bias);
    }
  }
#endif
  return conv(x);
}

ConvKernelsChoice resolve_conv_kernels(const std::string& name, torch::Device device, bool may_run_fp32) {
  if (name != "auto") {
    const auto kernels = conv_kernels_from_string(name);
    if (kernels == ConvKernels::onednn && !onednn_conv_built()) {
      throw std::invalid_argument("--conv-kernels onednn: this build has no oneDNN (install libdnnl-dev and rebuild)");
    }
    if (kernels == ConvKernels::onednn && !device.is_cpu()) {
      throw std::invalid_argument("--conv-kernels onednn: oneDNN convolutions run on the CPU only");
    }
    return {kernels, "asked for"};
  }
  if (!onednn_conv_built()) return {ConvKernels::aten, "auto: built without oneDNN"};
  if (!device.is_cpu()) return {ConvKernels::aten, "auto: not on the CPU"};
  if (!may_run_fp32) return {ConvKernels::aten, "auto: bf16 convolutions run through autocast"};
  // oneDNN's direct algorithm is what ATen runs already: only Winograd is worth the switch. Which
  // shapes then take it is timed per shape (conv3x3), not decided here from one shape's timing.
  const auto implementation = typical_conv3x3_implementation();
  if (!names_winograd(implementation)) {
    return {ConvKernels::onednn, "auto: oneDNN has no Winograd kernel for this CPU (" + implementation +
                                     "); the own F(4×4, 3×3) Winograd runs the blocked shapes where timed faster"};
  }
  return {ConvKernels::onednn, "auto: oneDNN runs Winograd here (" + implementation +
                                   "); each shape takes it where timed faster than ATen"};
}

}  // namespace diffuse
