// Batched matrix products on the CPU through oneDNN's matmul primitive.
//
// LibTorch 1.13's CPU bmm multiplies one matrix pair at a time (a select and a BLAS call per batch
// element), and BLAS runs single-threaded here (runtime/device.h), so the attention products of a
// batch ran on one core with per-matrix overhead. oneDNN's matmul takes the whole batch in one
// call on all threads, reading any strides (transposed views need no copy). Measured on the
// U-Nets' attention shapes (2 threads, docs/PERFORMANCE.md): 5–8× faster than torch::matmul.
//
// Compiled where the oneDNN headers were found (DIFFUSE_HAVE_ONEDNN, as for onednn_conv.h).
#pragma once

#include <torch/torch.h>

namespace diffuse {

// Whether this build has the oneDNN path at all.
bool onednn_matmul_built();

// c[i] = a[i] · b[i] for float32 CPU tensors a: [B, M, K], b: [B, K, N] with any strides → c:
// [B, M, N] contiguous; differentiable in a and b (the gradients are the same products:
// ∂L/∂a = ∂L/∂c · bᵀ, ∂L/∂b = aᵀ · ∂L/∂c). Throws where the build has no oneDNN.
torch::Tensor onednn_bmm(const torch::Tensor& a, const torch::Tensor& b);

}  // namespace diffuse
