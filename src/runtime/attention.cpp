#include "diffuse/runtime/attention.h"

#include <atomic>
#include <cmath>
#include <stdexcept>

namespace diffuse {

namespace {
std::atomic<AttentionKernel> g_kernel{AttentionKernel::math};

std::string libtorch_version() {
  return std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR);
}
}  // namespace

std::string to_string(AttentionKernel k) { return k == AttentionKernel::fused ? "fused" : "math"; }

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
  const auto C = q.size(1);
  // weights[b, i, j] = softmax_j(q_i · k_j / √C)                        [B, N, N]
  // (softmax in float32 also under bf16 autocast)
  auto scores = torch::matmul(q.transpose(1, 2), k) / std::sqrt(static_cast<double>(C));
  auto weights = torch::softmax(scores.to(torch::kFloat32), -1);
  return torch::matmul(v, weights.transpose(1, 2));  // out[b, :, i] = Σ_j weights[b, i, j] v[b, :, j]
}

AttentionChoice resolve_attention_kernel(const std::string& name, torch::Device device) {
  if (name == "math") return {AttentionKernel::math, "as asked"};
  if (name == "fused") {
    if (!fused_attention_built()) {
      throw std::invalid_argument("--attention fused: needs LibTorch 2.0 or later (this build has " + libtorch_version() +
                                  ")");
    }
    return {AttentionKernel::fused, "as asked"};
  }
  if (name != "auto") throw std::invalid_argument("--attention: expected math, fused or auto, got '" + name + "'");
  // On an H200 (docs/PERFORMANCE.md) fused was no faster for these U-Nets' one-head attention over
  // 16×16 = 256 positions: the N×N scores are small there.
  return {AttentionKernel::math, "auto: math (fused measured no faster)"};
}

}  // namespace diffuse
