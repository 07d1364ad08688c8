// The op layer: the few operations the U-Net is written in (GroupNorm with the time shift, SiLU
// and dropout; convolution with an optional residual; self-attention; 2× upsampling), each
// choosing its kernel here, so that the model's blocks read as the paper's equations and know
// nothing of kernels. model/ includes runtime/ only through this header.
//
// How a forward pass computes is planned once, from its input, before its first convolution
// (plan_forward_pass; UNet::forward holds the plan in a ForwardPass for the ops it calls): the
// activations' layout and the family of kernels. Each op then takes its kernel from the plan,
// checking only that kernel's own preconditions (shapes, dtype) on the tensors it is handed. The
// layout travels with the tensors:
//   NCHW             [B, C, H, W]            every device, precision and memory format (and
//                                            channels-last memory, where the pass asked for it);
//   channel-blocked  [B, C/b, H, W, b]      float32 on a CPU with oneDNN (runtime/blocked_layout.h),
// told apart by their rank. H and W are dimensions 2 and 3 in both, and channels concatenate
// along dimension 1 in both (torch::cat({a, b}, 1)), blocks being whole.
#pragma once

#include <torch/torch.h>

#include <string>
#include <utility>
#include <vector>

#include "diffuse/runtime/precision.h"

namespace diffuse {

inline bool is_blocked(const torch::Tensor& x) { return x.dim() == 5; }

// The family of kernels a pass runs.
enum class KernelPath {
  cpu_blocked,    // float32 on a CPU with oneDNN, channel-blocked from conv_in to norm_out: the fused blocked kernels
  cpu_bf16_nhwc,  // bf16 autocast on a CPU, channels-last: oneDNN's NHWC bf16 convolutions, the NHWC fused norm
  cpu_bf16_nchw,  // bf16 autocast on a CPU, NCHW: the fused bf16 NCHW norm
  cuda_nhwc_inference,  // a GPU, channels-last, no gradients: the own norm, bias + residual and upsampling kernels
  cuda,                 // a GPU otherwise: LibTorch's operators
  aten,                 // LibTorch's operators
};
std::string to_string(KernelPath path);

struct PassPlan {
  MemoryFormat layout = MemoryFormat::nchw;  // of the pass's NCHW-ranked tensors (blocked ones are told by rank)
  KernelPath path = KernelPath::aten;
  bool fused_cat = true;           // blocked: the up path's cat(h, skip) read by the norm kernel itself
  bool cuda_bias_in_shift = true;  // GPU: conv1's bias joins the time shift (convolve_with_shift)
};

// The plan for a pass whose input is x (device, dtype, autocast, whether gradients are recorded)
// in `format`: channel-blocked where the float32 CPU path applies and every width of the network
// is a multiple of `width_unit`. The runtime settings (runtime/settings.h) are read here, once a pass.
PassPlan plan_forward_pass(const torch::Tensor& x, MemoryFormat format, int64_t width_unit);

// Holds a plan for the ops called on this thread until it is destroyed; ops called outside any
// pass (a block alone, in a test) plan from the tensor they are handed.
class ForwardPass {
 public:
  explicit ForwardPass(PassPlan plan);
  ~ForwardPass();
  ForwardPass(const ForwardPass&) = delete;
  ForwardPass& operator=(const ForwardPass&) = delete;
  const PassPlan& plan() const { return plan_; }

 private:
  PassPlan plan_;
  const PassPlan* outer_;
};
// The plan in force on this thread, nullptr outside a pass.
const PassPlan* current_pass_plan();

// The first convolution of a pass (3×3, padding 1), into the plan's layout: blocked (conv_in then
// writes the blocked layout itself, runtime/blocked_conv_in.h), or NCHW or channels-last memory.
torch::Tensor convolve_input(torch::nn::Conv2d& conv, const torch::Tensor& x);

// norm(x) computed in the norm's own (float32) precision, whatever x's dtype; on a GPU, for
// channels-last inference, one kernel with float32 statistics and x's dtype out; on blocked
// activations, the CPU's fused kernel without its SiLU.
torch::Tensor group_norm(torch::nn::GroupNorm& norm, const torch::Tensor& x);

// SiLU(GroupNorm(x + shift)), shift: [B, C] (a ResBlock's time projection) or undefined.
// Blocked, or bf16 NCHW on the CPU: one fused kernel (runtime/group_norm_silu.h); channels-last on
// CUDA: runtime/group_norm_cuda.h where it applies; otherwise LibTorch's ops, the norm in its
// weights' precision.
torch::Tensor norm_silu(torch::nn::GroupNorm& norm, const torch::Tensor& x, const torch::Tensor& shift = {});

// {SiLU(GroupNorm(x)), x}: a ResBlock's first normalisation and the x its residual connection
// reads. Blocked, the second is x passed through the fused kernel, so that backward adds the
// residual's gradient of x inside that kernel; NCHW: x itself.
std::pair<torch::Tensor, torch::Tensor> norm_silu_and_input(torch::nn::GroupNorm& norm, const torch::Tensor& x);

// The same for x = cat(a, b) along channels (a block of the U-Net's up path: h and its skip
// connection). Blocked: one kernel reads a and b and writes both outputs, and its backward writes
// ∂L/∂a and ∂L/∂b (runtime/group_norm_silu.h); otherwise torch::cat first. DIFFUSE_FUSED_CAT=0
// takes torch::cat in either layout (to measure the kernel).
std::pair<torch::Tensor, torch::Tensor> norm_silu_and_input_of_cat(torch::nn::GroupNorm& norm, const torch::Tensor& a,
                                                                   const torch::Tensor& b);

// dropout(SiLU(GroupNorm(x + shift))), the ResBlock's second normalisation. Blocked: the mask is
// drawn inside the fused kernel (group_norm_silu_blocked) in training mode; NCHW: the module.
torch::Tensor norm_silu_dropout(torch::nn::GroupNorm& norm, const torch::Tensor& x, const torch::Tensor& shift,
                                torch::nn::Dropout& dropout);

// conv(x) (+ residual, where defined) for a k×k convolution module with padding k/2. Blocked:
// oneDNN on the blocked layout, or, where the outputs are not whole blocks of 16 (conv_out),
// runtime/blocked_conv_out.h, which writes NCHW; channels-last on a GPU without gradients: the
// bias and the residual added by one kernel (runtime/conv_epilogue_cuda.h); NCHW: conv3x3
// (runtime/onednn_conv.h) for 3×3 stride 1, else the module's own forward; then y += residual.
torch::Tensor convolve(torch::nn::Conv2d& conv, const torch::Tensor& x, const torch::Tensor& residual = {});

// conv(x) + shift[B, C_out] as a pair {y, shift'} with y + shift' = conv(x) + shift, for a norm
// that adds the shift anyway (norm_silu): on a GPU the convolution's bias joins the shift instead
// of costing a broadcasting pass after the convolution and a reduction in backward;
// DIFFUSE_CUDA_BIAS_IN_SHIFT=0 keeps it in the convolution (runtime/settings.h).
std::pair<torch::Tensor, torch::Tensor> convolve_with_shift(torch::nn::Conv2d& conv, const torch::Tensor& x,
                                                            const torch::Tensor& shift);

// conv(pad(x)), pad = {left, right, top, bottom} zeros, with the module's own padding on top
// (the DDPM paper's downsampling: {0, 1, 0, 1} and padding 0).
torch::Tensor convolve_padded(torch::nn::Conv2d& conv, const torch::Tensor& x, const std::vector<int64_t>& pad);

// Self-attention over the H·W positions of qkv = [q; k; v] (3C channels, in the pass's layout),
// with `heads` heads of C/heads channels:
//   h[:, i] = Σ_j softmax_j(q_i · k_j / √(C/heads)) v_j
// returned in the layout of `like` (the block's input) for the output projection.
torch::Tensor self_attention(const torch::Tensor& qkv, int64_t heads, const torch::Tensor& like);

// Cross-attention of the H·W positions of q (C channels, in the pass's layout) over L tokens
// k, v: [B, L, C], with `heads` heads of C/heads channels:
//   h[:, i] = Σ_j softmax_j(q_i · k_j / √(C/heads) + M_j) v_j,  M_j = −∞ where key_mask [B, L] is false
// returned in the layout of `like` (the block's input) for the output projection.
torch::Tensor cross_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                              const torch::Tensor& key_mask, int64_t heads, const torch::Tensor& like);

// The same product with every operand token-major, [B, N, D] over [B, L, D] (the text encoder).
torch::Tensor token_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                              const torch::Tensor& key_mask, int64_t heads);

// Nearest-neighbour upsampling to height × width (index ⌊i · in/out⌋ on each axis).
torch::Tensor upsample_nearest(const torch::Tensor& x, int64_t height, int64_t width);

}  // namespace diffuse
