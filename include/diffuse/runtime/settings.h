// The runtime's switches, in one place: read from the environment once, and again only after an
// EnvironmentSwitch changed a variable (util/environment.h; what `diffuse bench --alternate` and
// the tests of switches use), so that no kernel call reads the environment.
#pragma once

namespace diffuse {

enum class ConvAlgorithmChoice { timed, direct, winograd };

struct RuntimeSettings {
  bool blocked_activations = true;  // DIFFUSE_BLOCKED_ACTIVATIONS=0: NCHW on the float32 CPU path
  int channel_block = 0;            // DIFFUSE_CHANNEL_BLOCK=8|16: that block, not oneDNN's (0)
  bool fused_cat = true;            // DIFFUSE_FUSED_CAT=0: torch::cat before the up path's first norm
  bool own_winograd = false;        // DIFFUSE_OWN_WINOGRAD=1: the own F(4×4, 3×3) also where oneDNN has one
  ConvAlgorithmChoice conv_algorithm = ConvAlgorithmChoice::timed;  // DIFFUSE_CONV_ALGORITHM=direct|winograd
  bool onednn_bf16 = true;          // DIFFUSE_ONEDNN_BF16=0: LibTorch's bf16 convolutions on the CPU
  bool timing_cache = true;         // DIFFUSE_TIMING_CACHE=0: time every shape afresh, keep nothing
  bool large_block_cache = true;    // DIFFUSE_LARGE_BLOCK_CACHE=0: glibc serves blocks over 32 MiB
  bool cuda_group_norm = true;      // DIFFUSE_CUDA_GROUP_NORM=0: LibTorch's GroupNorm on the GPU
  bool cuda_conv_bias = true;       // DIFFUSE_CUDA_CONV_BIAS=0: no bias + residual epilogue kernel
  bool cuda_upsample = true;        // DIFFUSE_CUDA_UPSAMPLE=0: LibTorch's nearest upsampling
  bool cuda_bias_in_shift = true;   // DIFFUSE_CUDA_BIAS_IN_SHIFT=0: conv1's bias stays in conv1
  bool fused_adamw = true;          // DIFFUSE_FUSED_ADAMW=0: the multi-tensor AdamW on GPU parameters
};

// Throws std::invalid_argument naming the variable where a switch holds a value it does not take
// (DIFFUSE_CHANNEL_BLOCK=12); `diffuse` reads them once at start, so that such a value stops it there.
const RuntimeSettings& runtime_settings();

}  // namespace diffuse
