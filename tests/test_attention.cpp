// The attention product (runtime/attention.h): the math kernel against a float64 einsum; oneDNN's
// batched matmul (runtime/onednn_matmul.h) against float64 products on strided views, gradients
// included, and a whole U-Net with it; the fused kernel against the math one where LibTorch has
// it (2.0 and later: the GPU check); the --attention resolution rules.
#include <gtest/gtest.h>

#include "diffuse/model/unet.h"
#include "diffuse/runtime/attention.h"
#include "diffuse/runtime/onednn_matmul.h"
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

#define SKIP_WITHOUT_ONEDNN() \
  if (!onednn_matmul_built()) GTEST_SKIP() << "built without oneDNN (libdnnl-dev)"

TEST(OneDnnBmm, ProductsAndGradientsOfStridedViewsMatchFloat64) {
  SKIP_WITHOUT_ONEDNN();
  torch::manual_seed(6);
  // the attention block's operands: q, k as selects of one qkv tensor, q transposed (a view)
  auto qkv = torch::randn({3, 3, 16, 20}, torch::requires_grad());
  auto a = qkv.select(1, 0).transpose(1, 2), b = qkv.select(1, 1);  // [3, 20, 16] · [3, 16, 20]
  auto c = onednn_bmm(a, b);
  ASSERT_EQ(c.sizes(), (std::vector<int64_t>{3, 20, 20}));
  auto a64 = a.detach().to(torch::kFloat64).requires_grad_(), b64 = b.detach().to(torch::kFloat64).requires_grad_();
  auto c64 = torch::matmul(a64, b64);
  EXPECT_LT(relative_error(c, c64), 1e-6);
  auto weight = torch::randn({3, 20, 20});  // L = Σ w ⊙ c: ∂L/∂c = w
  auto grads = torch::autograd::grad({(c * weight).sum()}, {a, b});
  auto grads64 = torch::autograd::grad({(c64 * weight.to(torch::kFloat64)).sum()}, {a64, b64});
  EXPECT_LT(relative_error(grads[0], grads64[0]), 1e-6);
  EXPECT_LT(relative_error(grads[1], grads64[1]), 1e-6);
  // a product with the same shapes but other strides takes its own primitive
  EXPECT_LT(relative_error(onednn_bmm(a.contiguous(), b), c64), 1e-6);
  // neither inner dimension dense (every other row and column): oneDNN's primitive or dense copies
  auto wide = torch::randn({3, 40, 32});
  auto sparse_view = wide.slice(1, 0, 40, 2).slice(2, 0, 32, 2);  // [3, 20, 16], strides (1280, 64, 2)
  EXPECT_LT(relative_error(onednn_bmm(sparse_view, b.detach()),
                           torch::matmul(sparse_view.to(torch::kFloat64), b64.detach())),
            1e-6);
  EXPECT_THROW(onednn_bmm(a, a), c10::Error);                    // inner sizes differ
  EXPECT_THROW(onednn_bmm(a.to(torch::kFloat64), b), c10::Error);  // not float32
}

TEST(Attention, OneDnnKernelMatchesAFloat64ReferenceAndInAWholeUNet) {
  SKIP_WITHOUT_ONEDNN();
  torch::manual_seed(3);
  auto q = torch::randn({2, 8, 12}), k = torch::randn({2, 8, 12}), v = torch::randn({2, 8, 12});
  {
    AttentionScope scope(AttentionKernel::onednn);
    EXPECT_LT(relative_error(dot_product_attention(q, k, v), reference_attention(q, k, v)), 1e-5);
  }
  auto net = diffuse::testing::random_unet("mnist", 1, 28, 4);
  net->train();
  auto x = torch::randn({4, 1, 28, 28});
  auto t = torch::randint(0, 1000, {4}, torch::kLong);
  auto loss_and_grads = [&](AttentionKernel kernel) {
    AttentionScope scope(kernel);
    return diffuse::testing::loss_and_flat_gradients(net, x, t);
  };
  const auto [loss_math, grads_math] = loss_and_grads(AttentionKernel::math);
  const auto [loss_onednn, grads_onednn] = loss_and_grads(AttentionKernel::onednn);
  EXPECT_NEAR(loss_onednn, loss_math, 1e-5 * std::abs(loss_math));
  EXPECT_LT(relative_error(grads_onednn, grads_math), 1e-4);
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
  EXPECT_EQ(resolve_attention_kernel("auto", torch::kCPU).kernel,
            onednn_matmul_built() ? AttentionKernel::onednn : AttentionKernel::math);
  EXPECT_EQ(resolve_attention_kernel("auto", torch::kCPU, /*may_run_fp32=*/false).kernel, AttentionKernel::math);
  EXPECT_EQ(resolve_attention_kernel("auto", torch::kCUDA).kernel, AttentionKernel::math);
  EXPECT_THROW(resolve_attention_kernel("onednn", torch::kCUDA), std::invalid_argument);
  if (onednn_matmul_built()) {
    EXPECT_EQ(resolve_attention_kernel("onednn", torch::kCPU).kernel, AttentionKernel::onednn);
  }
  if (fused_attention_built()) {
    EXPECT_EQ(resolve_attention_kernel("fused", torch::kCPU).kernel, AttentionKernel::fused);
  } else {
    EXPECT_THROW(resolve_attention_kernel("fused", torch::kCPU), std::invalid_argument);
  }
  EXPECT_THROW(resolve_attention_kernel("flash", torch::kCPU), std::invalid_argument);
}
