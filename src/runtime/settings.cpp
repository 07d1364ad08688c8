#include "diffuse/runtime/settings.h"

#include <atomic>
#include <mutex>

#include "diffuse/util/environment.h"

namespace diffuse {

namespace {

RuntimeSettings read_settings() {
  RuntimeSettings s;
  s.blocked_activations = !env_equals("DIFFUSE_BLOCKED_ACTIVATIONS", "0");
  if (env_equals("DIFFUSE_CHANNEL_BLOCK", "8")) s.channel_block = 8;
  if (env_equals("DIFFUSE_CHANNEL_BLOCK", "16")) s.channel_block = 16;
  s.fused_cat = !env_equals("DIFFUSE_FUSED_CAT", "0");
  s.own_winograd = env_equals("DIFFUSE_OWN_WINOGRAD", "1");
  if (env_equals("DIFFUSE_CONV_ALGORITHM", "direct")) s.conv_algorithm = ConvAlgorithmChoice::direct;
  if (env_equals("DIFFUSE_CONV_ALGORITHM", "winograd")) s.conv_algorithm = ConvAlgorithmChoice::winograd;
  s.onednn_bf16 = !env_equals("DIFFUSE_ONEDNN_BF16", "0");
  s.timing_cache = !env_equals("DIFFUSE_TIMING_CACHE", "0");
  s.large_block_cache = !env_equals("DIFFUSE_LARGE_BLOCK_CACHE", "0");
  s.cuda_group_norm = !env_equals("DIFFUSE_CUDA_GROUP_NORM", "0");
  s.cuda_conv_bias = !env_equals("DIFFUSE_CUDA_CONV_BIAS", "0");
  s.cuda_upsample = !env_equals("DIFFUSE_CUDA_UPSAMPLE", "0");
  s.cuda_bias_in_shift = !env_equals("DIFFUSE_CUDA_BIAS_IN_SHIFT", "0");
  s.fused_adamw = !env_equals("DIFFUSE_FUSED_ADAMW", "0");
  return s;
}

}  // namespace

const RuntimeSettings& runtime_settings() {
  static std::mutex mutex;
  static RuntimeSettings settings;
  static std::atomic<uint64_t> read_at{~uint64_t{0}};  // the environment generation read last
  const uint64_t now = environment_generation();
  if (read_at.load(std::memory_order_acquire) != now) {
    std::lock_guard<std::mutex> lock(mutex);
    if (read_at.load(std::memory_order_relaxed) != now) {
      settings = read_settings();
      read_at.store(now, std::memory_order_release);
    }
  }
  return settings;
}

}  // namespace diffuse
