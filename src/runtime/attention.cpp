#include "diffuse/runtime/attention.h"

#include <atomic>
#include <cmath>
#include <limits>
#include <stdexcept>

#include "diffuse/runtime/onednn_matmul.h"
#include "diffuse/runtime/precision.h"

namespace diffuse {

namespace {
std::atomic<AttentionKernel> g_kernel{AttentionKernel::math};

std::string libtorch_version() {
  return std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR);
}
}  // namespace

std::string to_string(AttentionKernel k) {
  switch (k) {
    case AttentionKernel::onednn: return "onednn";
    case AttentionKernel::fused: return "fused";
    default: return "math";
  }
}

bool fused_attention_built() {
#if TORCH_VERSION_MAJOR >= 2
  return true;
#else
  return false;
#endif
}

void set_attention_kernel(AttentionKernel kernel) {
  if (kernel == AttentionKernel::fused && !fused_attention_built()) {
    throw std::invalid_argument("fused attention needs LibTorch 2.0 or later (this build has " + libtorch_version() + ")");
  }
  if (kernel == AttentionKernel::onednn && !onednn_matmul_built()) {
    throw std::invalid_argument("oneDNN attention products: this build has no oneDNN (install libdnnl-dev and rebuild)");
  }
  g_kernel = kernel;
}

AttentionKernel attention_kernel() { return g_kernel; }

torch::Tensor dot_product_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
#if TORCH_VERSION_MAJOR >= 2
  if (g_kernel == AttentionKernel::fused) {
    // [B, C, N] → [B, heads = 1, N, C], last dimension contiguous as the fused kernels want it;
    // the default scale is 1/√C.
    auto heads = [](const torch::Tensor& a) { return a.transpose(1, 2).unsqueeze(1).contiguous(); };
    return at::scaled_dot_product_attention(heads(q), heads(k), heads(v)).squeeze(1).transpose(1, 2);
  }
#endif
  const bool onednn = g_kernel == AttentionKernel::onednn && q.device().is_cpu() &&
                      q.scalar_type() == torch::kFloat32 && k.scalar_type() == torch::kFloat32 &&
                      v.scalar_type() == torch::kFloat32 && !autocast_enabled(torch::kCPU);
  auto bmm = [onednn](const torch::Tensor& a, const torch::Tensor& b) {
    return onednn ? onednn_bmm(a, b) : torch::matmul(a, b);
  };
  const auto C = q.size(1);
  // weights[b, i, j] = softmax_j(q_i · k_j / √C)                        [B, N, N]
  // (softmax in float32 also in bf16, then back to v's dtype for the product)
  auto scores = bmm(q.transpose(1, 2), k) / std::sqrt(static_cast<double>(C));
  auto weights = torch::softmax(scores.to(torch::kFloat32), -1).to(v.scalar_type());
  return bmm(v, weights.transpose(1, 2));  // out[b, :, i] = Σ_j weights[b, i, j] v[b, :, j]
}

torch::Tensor dot_product_attention_tokens(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
  if (!q.is_cuda() || g_kernel == AttentionKernel::onednn) {  // the [B, C, N] kernels, through transposes
    const auto t = [](const torch::Tensor& a) { return a.transpose(1, 2); };
    return t(dot_product_attention(t(q), t(k), t(v))).contiguous();
  }
#if TORCH_VERSION_MAJOR >= 2
  if (g_kernel == AttentionKernel::fused) {  // [B, N, C] → [B, heads = 1, N, C], a view
    return at::scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1).contiguous();
  }
#endif
  const auto C = q.size(2);
  // scores[b, i, j] = q_i · k_j / √C                                      [B, N, N]
  auto scores = torch::matmul(q, k.transpose(1, 2)) / std::sqrt(static_cast<double>(C));
  // weights = softmax_j(scores): CUDA's kernel computes in float32 and writes the scores' dtype,
  // where the [B, C, N] route converts bf16 scores to float32 and the weights back, two passes
  // more (at::_softmax, since autocast would cast softmax's input to float32 first)
  auto weights = at::_softmax(scores, -1, /*half_to_float=*/false);
  return torch::matmul(weights.to(v.scalar_type()), v);  // out[b, i, :] = Σ_j weights[b, i, j] v[b, j, :]
}

AttentionChoice resolve_attention_kernel(const std::string& name, torch::Device device, bool may_run_fp32) {
  if (name == "math") return {AttentionKernel::math, "as asked"};
  if (name == "onednn") {
    if (!onednn_matmul_built()) {
      throw std::invalid_argument("--attention onednn: this build has no oneDNN (install libdnnl-dev and rebuild)");
    }
    if (!device.is_cpu()) throw std::invalid_argument("--attention onednn: oneDNN's products run on the CPU only");
    return {AttentionKernel::onednn, "as asked"};
  }
  if (name == "fused") {
    if (!fused_attention_built()) {
      throw std::invalid_argument("--attention fused: needs LibTorch 2.0 or later (this build has " + libtorch_version() +
                                  ")");
    }
    return {AttentionKernel::fused, "as asked"};
  }
  if (name != "auto") {
    throw std::invalid_argument("--attention: expected math, onednn, fused or auto, got '" + name + "'");
  }
  if (device.is_cpu() && onednn_matmul_built() && !may_run_fp32) {
    return {AttentionKernel::math, "auto: bf16 products run through autocast"};
  }
  if (device.is_cpu() && onednn_matmul_built()) {
    return {AttentionKernel::onednn, "auto: oneDNN's batched matmul on the CPU (float32)"};
  }
  // On an H200 (docs/PERFORMANCE.md) fused was no faster for these U-Nets' one-head attention over
  // 16×16 = 256 positions: the N×N scores are small there.
  return {AttentionKernel::math, "auto: math (fused measured no faster)"};
}

torch::Tensor masked_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               const torch::Tensor& key_mask, int64_t heads) {
  const int64_t B = q.size(0), N = q.size(1), L = k.size(1), D = q.size(2);
  TORCH_CHECK(heads >= 1 && D % heads == 0, "masked_attention: ", heads, " heads do not divide ", D, " channels");
  TORCH_CHECK(k.sizes() == v.sizes() && k.size(0) == B && k.size(2) == D, "masked_attention: q ", q.sizes(), ", k ",
              k.sizes(), ", v ", v.sizes());
  TORCH_CHECK(key_mask.sizes() == torch::IntArrayRef({B, L}), "masked_attention: key_mask ", key_mask.sizes(), " for ",
              L, " keys of ", B, " rows");
  const int64_t d = D / heads;
  auto heads_major = [&](const torch::Tensor& x, int64_t n) { return x.reshape({B, n, heads, d}).transpose(1, 2); };
  // scores [B, heads, N, L], in float32 whatever the inputs' precision
  auto scores = torch::matmul(heads_major(q, N), heads_major(k, L).transpose(-1, -2)).to(torch::kFloat32) /
                std::sqrt(static_cast<double>(d));
  scores = scores.masked_fill(key_mask.logical_not().view({B, 1, 1, L}), -std::numeric_limits<float>::infinity());
  const auto weights = torch::softmax(scores, -1).to(v.scalar_type());
  return torch::matmul(weights, heads_major(v, L)).transpose(1, 2).reshape({B, N, D});
}

}  // namespace diffuse
