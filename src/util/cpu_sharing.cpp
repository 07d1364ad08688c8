#include "diffuse/util/cpu_sharing.h"

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

namespace diffuse {
namespace {

// /proc/stat's "procs_running N": tasks runnable right now, the reader included; -1 where unknown.
int runnable_tasks() {
  std::ifstream in("/proc/stat");
  std::string key;
  long value = 0;
  while (in >> key) {
    if (key == "procs_running" && in >> value) return static_cast<int>(value);
    in.ignore(LONG_MAX, '\n');
  }
  return -1;
}

// Threads of this process that are runnable right now (state R in /proc/self/task/*/stat), the
// caller included; 1 where unknown.
int own_runnable_threads() {
  std::error_code error;
  int running = 0;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task", error)) {
    std::ifstream in(task.path() / "stat");
    std::string line;
    if (!std::getline(in, line)) continue;
    const auto paren = line.rfind(')');  // "tid (name) S …": the name may hold spaces and parentheses
    if (paren != std::string::npos && paren + 2 < line.size() && line[paren + 2] == 'R') ++running;
  }
  return std::max(1, running);
}

int cores_in_affinity_mask() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

}  // namespace

int free_cores() {
  const int cores = cores_in_affinity_mask();
  int others = INT_MAX;
  for (int read = 0; read < 5; ++read) {
    if (read > 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    const int running = runnable_tasks();
    if (running < 1) return cores;
    others = std::min(others, running - own_runnable_threads());
  }
  return std::clamp(cores - others, 1, cores);
}

namespace {
std::atomic<bool> follow_load{false};
}  // namespace

void set_threads_follow_load(bool follow) { follow_load = follow; }
bool threads_follow_load() { return follow_load; }

int threads_for_load(int current, double min_seconds) {
  using Clock = std::chrono::steady_clock;
  static std::atomic<Clock::rep> last_look{0};  // 0: never looked
  if (!follow_load) return current;
  const auto now = Clock::now().time_since_epoch().count();
  const auto since = std::chrono::duration<double>(Clock::duration(now - last_look.load())).count();
  if (last_look.load() != 0 && since < min_seconds) return current;
  last_look = now;
  return free_cores();
}

}  // namespace diffuse
