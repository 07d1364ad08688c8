#include "diffuse/util/cpu_sharing.h"

#include <sched.h>

#include <algorithm>
#include <chrono>
#include <climits>
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
    others = std::min(others, running - 1);
  }
  return std::clamp(cores - others, 1, cores);
}

}  // namespace diffuse
