// The attention product (runtime/attention.h): the math kernel against a float64 einsum, the fused
// kernel against the math one where LibTorch has it (2.0 and later: the GPU check), gradients
// included, and the --attention resolution rules.
#include <gtest/gtest.h>

#include "diffuse/runtime/attention.h"
#include "support/networks.h"

using namespace diffuse;
using diffuse::testing::relative_error;

namespace {

struct AttentionScope {
  AttentionKernel previous = attention_kernel();
  explicit AttentionScope(AttentionKernel k) { set_attention_kernel(k); }
  ~AttentionScope() { set_attention_kernel(previous); }
};

// out[b, c, i] = Σ_j softmax_j(Σ_c' q[b, c', i] k[b, c', j] / √C) v[b, c, j], in float64.
torch::Tensor reference_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
  auto q64 = q.to(torch::kFloat64), k64 = k.to(torch::kFloat64), v64 = v.to(torch::kFloat64);
  auto scores = torch::einsum("bci,bcj->bij", {q64, k64}) / std::sqrt(static_cast<double>(q.size(1)));
  auto e = (scores - std::get<0>(scores.max(-1, true))).exp();
  return torch::einsum("bij,bcj->bci", {e / e.sum(-1, true), v64});
}

}  // namespace

TEST(Attention, MathKernelMatchesAFloat64Reference) {
  torch::manual_seed(3);
  auto q = torch::randn({2, 8, 12}), k = torch::randn({2, 8, 12}), v = torch::randn({2, 8, 12});
  AttentionScope scope(AttentionKernel::math);
  auto out = dot_product_attention(q, k, v);
  ASSERT_EQ(out.sizes(), q.sizes());
  EXPECT_LT(relative_error(out, reference_attention(q, k, v)), 1e-5);
}

TEST(Attention, FusedKernelMatchesTheMathKernelWhereBuilt) {
  if (!fused_attention_built()) {
    EXPECT_THROW(set_attention_kernel(AttentionKernel::fused), std::invalid_argument);
    GTEST_SKIP() << "this LibTorch (before 2.0) has no scaled_dot_product_attention";
  }
  std::vector<torch::Device> devices{torch::kCPU};
  if (torch::cuda::is_available()) devices.emplace_back(torch::kCUDA);
  for (const auto& device : devices) {
    torch::manual_seed(4);
    auto opts = torch::TensorOptions().device(device).requires_grad(true);
    auto q = torch::randn({3, 64, 49}, opts), k = torch::randn({3, 64, 49}, opts), v = torch::randn({3, 64, 49}, opts);
    auto run = [&](AttentionKernel kernel) {
      AttentionScope scope(kernel);
      auto out = dot_product_attention(q, k, v);
      auto grads = torch::autograd::grad({(out * out.detach().cos()).sum()}, {q, k, v});
      return std::make_pair(out.detach(), grads);
    };
    const auto [math, math_grads] = run(AttentionKernel::math);
    const auto [fused, fused_grads] = run(AttentionKernel::fused);
    // On CUDA the float32 products may run in TF32 (10-bit mantissa).
    const double tol = device.is_cuda() ? 5e-3 : 1e-5;
    EXPECT_LT(relative_error(fused, math), tol) << device;
    for (size_t i = 0; i < 3; ++i) EXPECT_LT(relative_error(fused_grads[i], math_grads[i]), 10 * tol) << device << i;
  }
}

TEST(Attention, ResolutionRules) {
  EXPECT_EQ(resolve_attention_kernel("math", torch::kCUDA).kernel, AttentionKernel::math);
  EXPECT_EQ(resolve_attention_kernel("auto", torch::kCPU).kernel, AttentionKernel::math);
  EXPECT_EQ(resolve_attention_kernel("auto", torch::kCUDA).kernel, AttentionKernel::math);
  if (fused_attention_built()) {
    EXPECT_EQ(resolve_attention_kernel("fused", torch::kCPU).kernel, AttentionKernel::fused);
  } else {
    EXPECT_THROW(resolve_attention_kernel("fused", torch::kCPU), std::invalid_argument);
  }
  EXPECT_THROW(resolve_attention_kernel("flash", torch::kCPU), std::invalid_argument);
}
