// Reading switches from the environment (DIFFUSE_BLOCKED_ACTIVATIONS=0, DIFFUSE_CUDA_GROUP_NORM=0,
// the bench's DIFFUSE_BF16_WEIGHTS=1, ...): set to a value, or not.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>

namespace diffuse {

// The value of the switch `name`: "" where unset (or set empty), else one of `allowed`; any other
// value throws std::invalid_argument naming the variable ("DIFFUSE_CHANNEL_BLOCK=12: expected 8 or
// 16 (or unset)"), so that a mistyped switch does not pass for the default.
std::string env_switch(const char* name, std::initializer_list<const char*> allowed);

// Where diffuse keeps what it can rebuild (the cFID classifiers, the convolution timings):
// $DIFFUSE_CACHE_DIR, else $XDG_CACHE_HOME/diffuse, else $HOME/.cache/diffuse; empty where none
// of them is set.
std::string cache_directory();

// A number that changes whenever an EnvironmentSwitch switches a variable, so that settings read
// once from the environment (runtime/settings.h) know when to read them again.
uint64_t environment_generation();

// One variable switched between `value` (set(true)) and what it had before (set(false): that
// value, or unset); `on` switches it at once. The destructor restores it. For the bench's A/B
// runs and for tests of switches (runtime/settings.h reads them again after each switch).
class EnvironmentSwitch {
 public:
  EnvironmentSwitch(std::string name, std::string value, bool on = false);
  ~EnvironmentSwitch();
  EnvironmentSwitch(const EnvironmentSwitch&) = delete;
  EnvironmentSwitch& operator=(const EnvironmentSwitch&) = delete;
  void set(bool on);

 private:
  std::string name_, value_;
  std::optional<std::string> before_;
};

}  // namespace diffuse
