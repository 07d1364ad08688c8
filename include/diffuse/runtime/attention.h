// The attention product of the U-Net's self-attention blocks, in one of three kernels:
//   math:   scores = QᵀK/√C as a [B, N, N] tensor, softmax in float32, then V·softmaxᵀ, the two
//           products by torch::matmul (every LibTorch; what the block computed from the start);
//   onednn: the same steps, the two products by oneDNN's batched matmul (runtime/onednn_matmul.h)
//           where they are float32 on the CPU outside autocast, else as math;
//   fused:  LibTorch ≥ 2.0's scaled_dot_product_attention, which on CUDA runs flash or
//           memory-efficient attention and never writes the N×N matrix to memory.
// All compute out_i = Σ_j softmax_j(q_i · k_j / √C) v_j; they agree to rounding.
#pragma once

#include <torch/torch.h>
#include <torch/version.h>  // TORCH_VERSION_MAJOR, for the #if in attention.cpp

#include <string>

namespace diffuse {

enum class AttentionKernel { math, onednn, fused };
std::string to_string(AttentionKernel k);

// Whether this build's LibTorch has scaled_dot_product_attention (2.0 and later).
bool fused_attention_built();

// Process-wide choice, like set_conv_kernels.
void set_attention_kernel(AttentionKernel kernel);
AttentionKernel attention_kernel();

// q, k, v: [B, C, N] (C channels, N positions) → [B, C, N], in the kernel chosen above.
torch::Tensor dot_product_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v);

// The same with positions major: q, k, v: [B, N, C], last dimension contiguous (strided views of a
// channels-last qkv convolution's output do) → [B, N, C] contiguous, i.e. channels-last [B, C, H, W]
// once viewed as [B, H, W, C] and permuted. On CUDA the products read the views in place, and the
// softmax of bf16 scores stays bf16 in memory (float32 arithmetic); elsewhere it goes through
// dot_product_attention.
torch::Tensor dot_product_attention_tokens(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v);

// Multi-head attention of token-major queries [B, N, D] over keys and values [B, L, D] (the text
// encoder's self-attention, the U-Net's cross-attention), with `heads` heads of d = D/heads:
//   out = softmax(Q Kᵀ / √d + M) V,  M = −∞ where key_mask [B, L] is false (every row needs a true)
// torch::matmul products, the softmax in float32 → [B, N, D].
torch::Tensor masked_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               const torch::Tensor& key_mask, int64_t heads);

struct AttentionChoice {
  AttentionKernel kernel = AttentionKernel::math;
  std::string reason;  // one line for the log
};
// "math" / "onednn" / "fused" as asked ("onednn" throws where the build has no oneDNN, "fused"
// where LibTorch is older than 2.0); "auto": onednn on the CPU where built and the run can be
// float32 (`may_run_fp32` false: bf16, whose products run through autocast), else math (on an H200
// math was as fast as fused for the built-in U-Nets, docs/PERFORMANCE.md; fused saved 4 % of
// training memory there).
AttentionChoice resolve_attention_kernel(const std::string& name, torch::Device device, bool may_run_fp32 = true);

}  // namespace diffuse
