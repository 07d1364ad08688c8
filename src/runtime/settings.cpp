#include "diffuse/runtime/settings.h"

#include <atomic>
#include <mutex>
#include <string>

#include "diffuse/util/environment.h"

namespace diffuse {

namespace {

// A switch that is on unless set to 0.
bool on_unless_zero(const char* name) { return env_switch(name, {"0", "1"}) != "0"; }

RuntimeSettings read_settings() {
  RuntimeSettings s;
  s.blocked_activations = on_unless_zero("DIFFUSE_BLOCKED_ACTIVATIONS");
  const auto block = env_switch("DIFFUSE_CHANNEL_BLOCK", {"8", "16"});
  if (!block.empty()) s.channel_block = std::stoi(block);
  s.fused_cat = on_unless_zero("DIFFUSE_FUSED_CAT");
  s.own_winograd = env_switch("DIFFUSE_OWN_WINOGRAD", {"0", "1"}) == "1";
  const auto algorithm = env_switch("DIFFUSE_CONV_ALGORITHM", {"direct", "winograd"});
  if (algorithm == "direct") s.conv_algorithm = ConvAlgorithmChoice::direct;
  if (algorithm == "winograd") s.conv_algorithm = ConvAlgorithmChoice::winograd;
  s.onednn_bf16 = on_unless_zero("DIFFUSE_ONEDNN_BF16");
  s.timing_cache = on_unless_zero("DIFFUSE_TIMING_CACHE");
  s.large_block_cache = on_unless_zero("DIFFUSE_LARGE_BLOCK_CACHE");
  s.cuda_group_norm = on_unless_zero("DIFFUSE_CUDA_GROUP_NORM");
  s.cuda_conv_bias = on_unless_zero("DIFFUSE_CUDA_CONV_BIAS");
  s.cuda_upsample = on_unless_zero("DIFFUSE_CUDA_UPSAMPLE");
  s.cuda_bias_in_shift = on_unless_zero("DIFFUSE_CUDA_BIAS_IN_SHIFT");
  s.fused_adamw = on_unless_zero("DIFFUSE_FUSED_ADAMW");
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
