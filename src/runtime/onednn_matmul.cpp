#include "diffuse/runtime/onednn_matmul.h"

#include "diffuse/runtime/gradient_wanted.h"

#include "diffuse_build_config.h"

#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <vector>

#if DIFFUSE_HAVE_ONEDNN
#include <ATen/record_function.h>
#include <oneapi/dnnl/dnnl.hpp>

#include "onednn_engine.h"
#endif

namespace diffuse {

bool onednn_matmul_built() { return DIFFUSE_HAVE_ONEDNN != 0; }

#if DIFFUSE_HAVE_ONEDNN
namespace {

using dnnl::memory;
using onednn::cpu_engine;

memory::desc strided_desc(const torch::Tensor& t) {
  return memory::desc(t.sizes().vec(), memory::data_type::f32, t.strides().vec());
}

// The primitive for these operands' shapes and strides and the thread count (its work is split
// among the threads there were when it was created), generated once (oneDNN JIT-compiles it);
// nullptr where oneDNN takes no such strides (e.g. neither inner dimension dense), also remembered.
const dnnl::matmul* primitive_for(const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& c) {
  struct Entry {
    std::unique_ptr<dnnl::matmul> primitive;
    bool tried = false;
  };
  static std::mutex mutex;
  static std::map<std::vector<int64_t>, Entry> entries;
  std::vector<int64_t> key;
  for (const auto* t : {&a, &b}) {
    key.insert(key.end(), t->sizes().begin(), t->sizes().end());
    key.insert(key.end(), t->strides().begin(), t->strides().end());
  }
  key.push_back(at::get_num_threads());
  std::lock_guard<std::mutex> lock(mutex);
  auto& entry = entries[key];
  if (!entry.tried) {
    entry.tried = true;
    try {
      const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(strided_desc(a), strided_desc(b), strided_desc(c)),
                                            cpu_engine());
      entry.primitive = std::make_unique<dnnl::matmul>(pd);
    } catch (const dnnl::error&) {
    }
  }
  return entry.primitive.get();
}

torch::Tensor run_bmm(torch::Tensor a, torch::Tensor b) {
  RECORD_FUNCTION("diffuse::onednn_bmm", std::vector<c10::IValue>({a, b}));
  auto c = torch::empty({a.size(0), a.size(1), b.size(2)}, a.options());
  const dnnl::matmul* prim = primitive_for(a, b, c);
  if (prim == nullptr) {  // strides oneDNN does not take: dense copies
    a = a.contiguous();
    b = b.contiguous();
    prim = primitive_for(a, b, c);
    TORCH_CHECK(prim != nullptr, "onednn_bmm: oneDNN has no matmul for ", a.sizes(), " · ", b.sizes());
  }
  dnnl::stream stream(cpu_engine());
  memory ma(strided_desc(a), cpu_engine(), a.data_ptr()), mb(strided_desc(b), cpu_engine(), b.data_ptr()),
      mc(strided_desc(c), cpu_engine(), c.data_ptr());
  prim->execute(stream, {{DNNL_ARG_SRC, ma}, {DNNL_ARG_WEIGHTS, mb}, {DNNL_ARG_DST, mc}});
  stream.wait();
  return c;
}

struct OneDnnBmmFunction : public torch::autograd::Function<OneDnnBmmFunction> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& a, const torch::Tensor& b) {
    ctx->save_for_backward({a, b});
    return run_bmm(a, b);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& a = saved[0];
    const auto& b = saved[1];
    const auto& grad_c = grads[0];
    torch::Tensor grad_a, grad_b;
    if (ctx->needs_input_grad(0)) grad_a = run_bmm(grad_c, b.transpose(1, 2));  // ∂L/∂a = ∂L/∂c · bᵀ
    if (ctx->needs_input_grad(1)) grad_b = run_bmm(a.transpose(1, 2), grad_c);  // ∂L/∂b = aᵀ · ∂L/∂c
    return {grad_a, grad_b};
  }
};

}  // namespace
#endif  // DIFFUSE_HAVE_ONEDNN

torch::Tensor onednn_bmm(const torch::Tensor& a, const torch::Tensor& b) {
#if DIFFUSE_HAVE_ONEDNN
  TORCH_CHECK(a.dim() == 3 && b.dim() == 3 && a.size(0) == b.size(0) && a.size(2) == b.size(1),
              "onednn_bmm: expected [B, M, K] and [B, K, N], got ", a.sizes(), " and ", b.sizes());
  TORCH_CHECK(a.device().is_cpu() && b.device().is_cpu() && a.scalar_type() == torch::kFloat32 &&
                  b.scalar_type() == torch::kFloat32,
              "onednn_bmm: a and b must be float32 CPU tensors");
  if (gradient_wanted({a, b})) {
    return OneDnnBmmFunction::apply(a, b);
  }
  return run_bmm(a, b);
#else
  throw std::runtime_error("onednn_bmm: this build has no oneDNN (install libdnnl-dev and rebuild)");
#endif
}

}  // namespace diffuse
