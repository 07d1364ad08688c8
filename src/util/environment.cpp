#include "diffuse/util/environment.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <utility>

namespace diffuse {

namespace {
std::atomic<uint64_t> generation{0};
}  // namespace

uint64_t environment_generation() { return generation.load(std::memory_order_acquire); }

std::string env_switch(const char* name, std::initializer_list<const char*> allowed) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return {};
  std::string expected;
  for (const char* a : allowed) {
    if (std::strcmp(v, a) == 0) return v;
    expected += (expected.empty() ? "" : " or ") + std::string(a);
  }
  throw std::invalid_argument(std::string(name) + "=" + v + ": expected " + expected + " (or unset)");
}

std::string cache_directory() {
  if (const char* d = std::getenv("DIFFUSE_CACHE_DIR"); d && *d) return d;
  if (const char* d = std::getenv("XDG_CACHE_HOME"); d && *d) return std::string(d) + "/diffuse";
  if (const char* d = std::getenv("HOME"); d && *d) return std::string(d) + "/.cache/diffuse";
  return {};
}

EnvironmentSwitch::EnvironmentSwitch(std::string name, std::string value, bool on)
    : name_(std::move(name)), value_(std::move(value)) {
  if (const char* before = std::getenv(name_.c_str())) before_ = before;
  if (on) set(true);
}

EnvironmentSwitch::~EnvironmentSwitch() { set(false); }

void EnvironmentSwitch::set(bool on) {
  if (on) {
    setenv(name_.c_str(), value_.c_str(), 1);
  } else if (before_) {
    setenv(name_.c_str(), before_->c_str(), 1);
  } else {
    unsetenv(name_.c_str());
  }
  generation.fetch_add(1, std::memory_order_release);
}

}  // namespace diffuse
