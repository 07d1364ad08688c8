// oneDNN's convolution kernels for the U-Nets' shapes, by layout and precision: forward,
// backward-data and backward-weights, each pass the best of 15 runs (ms), and the kernel oneDNN
// picked. What made the CPU's bf16 path channels-last (docs/PERFORMANCE.md).
// Needs only libdnnl-dev, no LibTorch:
//   g++ -O2 -std=c++17 bench/onednn_conv_layouts.cpp -o /tmp/onednn_conv_layouts -ldnnl
//   OMP_NUM_THREADS=2 /tmp/onednn_conv_layouts [batch]
#include <oneapi/dnnl/dnnl.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

using namespace dnnl;
using tag = memory::format_tag;
using dt = memory::data_type;

namespace {

engine cpu(engine::kind::cpu, 0);
stream queue(cpu);

template <class F>
double best_ms(F&& run) {
  run();
  double best = 1e30;
  for (int i = 0; i < 15; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    run();
    queue.wait();
    best = std::min(best, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

// Small values in every element (uninitialised memory may hold NaNs or denormals, which slow
// some kernels down).
void fill(memory& m) {
  const auto& d = m.get_desc();
  const size_t bytes = d.get_size();
  if (d.data_type() == dt::bf16) {
    auto* p = static_cast<uint16_t*>(m.get_data_handle());
    for (size_t i = 0; i < bytes / 2; ++i) p[i] = static_cast<uint16_t>(0x3c00 + (i * 7919) % 64);  // 0.0078…0.0154
  } else {
    auto* p = static_cast<float*>(m.get_data_handle());
    for (size_t i = 0; i < bytes / 4; ++i) p[i] = 0.01f * static_cast<float>(static_cast<int>((i * 7919) % 200) - 100) / 100;
  }
}

void time_passes(int64_t n, int64_t c, int64_t o, int64_t h, const char* name, dt type, tag activations,
                 algorithm algo) {
  const memory::dims src_dims{n, c, h, h}, weights_dims{o, c, 3, 3}, dst_dims{n, o, h, h}, stride{1, 1}, pad{1, 1};
  const memory::desc src(src_dims, type, activations), dst(dst_dims, type, activations),
      weights(weights_dims, type, tag::any), bias({o}, dt::f32, tag::x), diff_weights(weights_dims, dt::f32, tag::any);
  try {
    const convolution_forward::primitive_desc fwd(
        {prop_kind::forward_training, algo, src, weights, bias, dst, stride, pad, pad}, cpu);
    const convolution_backward_data::primitive_desc bwd_data({algo, src, weights, dst, stride, pad, pad}, cpu, fwd);
    const convolution_backward_weights::primitive_desc bwd_weights(
        {algo, src, diff_weights, bias, dst, stride, pad, pad}, cpu, fwd);
    memory x(fwd.src_desc(), cpu), w(fwd.weights_desc(), cpu), b(bias, cpu), y(fwd.dst_desc(), cpu);
    memory dy(bwd_data.diff_dst_desc(), cpu), w2(bwd_data.weights_desc(), cpu), dx(bwd_data.diff_src_desc(), cpu);
    memory x2(bwd_weights.src_desc(), cpu), dy2(bwd_weights.diff_dst_desc(), cpu), dw(bwd_weights.diff_weights_desc(), cpu),
        db(bias, cpu);
    for (memory* m : {&x, &w, &b, &dy, &w2, &x2, &dy2}) fill(*m);
    convolution_forward f(fwd);
    convolution_backward_data bd(bwd_data);
    convolution_backward_weights bw(bwd_weights);
    const double tf = best_ms([&] {
      f.execute(queue, {{DNNL_ARG_SRC, x}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_BIAS, b}, {DNNL_ARG_DST, y}});
    });
    const double td = best_ms([&] {
      bd.execute(queue, {{DNNL_ARG_DIFF_DST, dy}, {DNNL_ARG_WEIGHTS, w2}, {DNNL_ARG_DIFF_SRC, dx}});
    });
    const double tw = best_ms([&] {
      bw.execute(queue,
                 {{DNNL_ARG_SRC, x2}, {DNNL_ARG_DIFF_DST, dy2}, {DNNL_ARG_DIFF_WEIGHTS, dw}, {DNNL_ARG_DIFF_BIAS, db}});
    });
    std::printf("| %lld → %lld, %lld×%lld | %s | %.2f / %.2f / %.2f | %s, %s, %s |\n", static_cast<long long>(c),
                static_cast<long long>(o), static_cast<long long>(h), static_cast<long long>(h), name, tf, td, tw,
                fwd.impl_info_str(), bwd_data.impl_info_str(), bwd_weights.impl_info_str());
  } catch (const dnnl::error& e) {
    std::printf("| %lld → %lld, %lld×%lld | %s | not available (%s) | |\n", static_cast<long long>(c),
                static_cast<long long>(o), static_cast<long long>(h), static_cast<long long>(h), name, e.what());
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t n = argc > 1 ? std::atoll(argv[1]) : 64;
  std::printf("batch %lld\n\n| shape | layout | fwd / bwd-data / bwd-weights ms | kernels |\n| --- | --- | --- | --- |\n",
              static_cast<long long>(n));
  const int64_t shapes[][3] = {{32, 32, 28}, {64, 64, 14}, {64, 64, 7}, {128, 128, 32}, {256, 256, 16}};
  for (const auto& s : shapes) {
    time_passes(n, s[0], s[1], s[2], "fp32 nChw16c, Winograd", dt::f32, tag::aBcd16b, algorithm::convolution_winograd);
    time_passes(n, s[0], s[1], s[2], "fp32 nChw16c, direct", dt::f32, tag::aBcd16b, algorithm::convolution_direct);
    time_passes(n, s[0], s[1], s[2], "fp32 NHWC, direct", dt::f32, tag::nhwc, algorithm::convolution_direct);
    time_passes(n, s[0], s[1], s[2], "bf16 nChw16c", dt::bf16, tag::aBcd16b, algorithm::convolution_direct);
    time_passes(n, s[0], s[1], s[2], "bf16 NHWC", dt::bf16, tag::nhwc, algorithm::convolution_direct);
  }
}
