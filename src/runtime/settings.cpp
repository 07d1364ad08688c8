#include "diffuse/runtime/settings.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <mutex>
#include <stdexcept>
#include <string>

#include "diffuse/util/environment.h"

namespace diffuse {

namespace {

// The value of the switch `name`: "" where unset (or set empty), else one of `allowed`; any other
// value is refused naming the variable, so that a mistyped switch does not pass for the default.
std::string switch_value(const char* name, std::initializer_list<const char*> allowed) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return {};
  std::string expected;
  for (const char* a : allowed) {
    if (std::strcmp(v, a) == 0) return v;
    expected += (expected.empty() ? "" : " or ") + std::string(a);
  }
  throw std::invalid_argument(std::string(name) + "=" + v + ": expected " + expected + " (or unset)");
}

// A switch that is on unless set to 0.
bool on_unless_zero(const char* name) { return switch_value(name, {"0", "1"}) != "0"; }

RuntimeSettings read_settings() {
  RuntimeSettings s;
  s.blocked_activations = on_unless_zero("DIFFUSE_BLOCKED_ACTIVATIONS");
  const auto block = switch_value("DIFFUSE_CHANNEL_BLOCK", {"8", "16"});
  if (!block.empty()) s.channel_block = std::stoi(block);
  s.fused_cat = on_unless_zero("DIFFUSE_FUSED_CAT");
  s.own_winograd = switch_value("DIFFUSE_OWN_WINOGRAD", {"0", "1"}) == "1";
  const auto algorithm = switch_value("DIFFUSE_CONV_ALGORITHM", {"direct", "winograd"});
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
