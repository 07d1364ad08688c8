#include "diffuse/runtime/timing_cache.h"
#include "diffuse/runtime/settings.h"

#include "diffuse/io/atomic_file.h"
#include "diffuse/runtime/precision.h"
#include "diffuse/util/environment.h"

#include <torch/version.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <utility>
#include <nlohmann/json.hpp>

namespace diffuse {

TimingCacheFile::TimingCacheFile(std::string path, std::string machine)
    : path_(std::move(path)), machine_(std::move(machine)) {}

TimingCacheFile::Machines TimingCacheFile::read_machines(bool warn) const {
  std::error_code missing;
  if (!std::filesystem::exists(path_, missing)) return {};
  try {
    const auto doc = nlohmann::json::parse(read_file(path_));
    if (doc.contains("machines")) return doc.at("machines").get<Machines>();
    // the first format: one machine's choices
    return {{doc.at("machine").get<std::string>(), doc.at("choices").get<std::map<std::string, int64_t>>()}};
  } catch (const std::exception& e) {
    if (warn) std::fprintf(stderr, "warning: timing cache '%s' ignored (%s)\n", path_.c_str(), e.what());
    return {};
  }
}

std::optional<int64_t> TimingCacheFile::find(const std::string& key) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!loaded_) {
    choices_ = read_machines(/*warn=*/true)[machine_];
    loaded_ = true;
  }
  if (const auto it = choices_.find(key); it != choices_.end()) return it->second;
  return std::nullopt;
}

void TimingCacheFile::store(const std::string& key, int64_t value) {
  std::lock_guard<std::mutex> lock(mutex_);
  // what other processes kept since this one read the file stays, other machines' choices too
  auto machines = read_machines(/*warn=*/false);
  for (const auto& [k, v] : machines[machine_]) choices_.emplace(k, v);
  choices_[key] = value;
  loaded_ = true;
  machines[machine_] = choices_;
  try {
    std::filesystem::create_directories(std::filesystem::path(path_).parent_path());
    const nlohmann::json doc = {{"machines", machines}};
    write_file_atomic(path_, doc.dump(1) + "\n", /*durable=*/false);
  } catch (const std::exception& e) {
    if (!warned_) std::fprintf(stderr, "warning: timing cache not written (%s)\n", e.what());
    warned_ = true;
  }
}

// The revision of the timed choices: raised when an own kernel that takes part in one (the
// Winograd convolution, the lane loops of runtime/lanes.h) gets faster or slower, or the timing
// itself changes, so that choices timed the old way are timed again.
constexpr int kChoicesRevision = 3;

std::string timing_machine_signature() {
  const char* cap = std::getenv("ONEDNN_MAX_CPU_ISA");
  return cpu_description() + ", LibTorch " + std::to_string(TORCH_VERSION_MAJOR) + "." +
         std::to_string(TORCH_VERSION_MINOR) + "." + std::to_string(TORCH_VERSION_PATCH) + ", choices r" +
         std::to_string(kChoicesRevision) + (cap ? std::string(", ONEDNN_MAX_CPU_ISA=") + cap : std::string());
}

TimingCacheFile* process_timing_cache() {
  // made once and never destroyed: convolutions may run during static destruction
  static TimingCacheFile* cache = []() -> TimingCacheFile* {
    if (!runtime_settings().timing_cache) return nullptr;
    const auto dir = cache_directory();
    if (dir.empty()) return nullptr;
    return new TimingCacheFile(dir + "/timings.json", timing_machine_signature());
  }();
  return cache;
}

}  // namespace diffuse
