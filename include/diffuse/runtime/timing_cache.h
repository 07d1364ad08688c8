// Choices made by timing (which convolution kernel is faster for a shape), kept across processes.
//
// The first call of each convolution shape times its candidates (runtime/onednn_conv.h), a cost
// paid again in every process (docs/PERFORMANCE.md, "Per-shape timings kept across processes"). The
// winners are kept in a small JSON file and read back by the next process on the same machine:
//   $DIFFUSE_CACHE_DIR/timings.json, else $XDG_CACHE_HOME/diffuse/timings.json, else
//   ~/.cache/diffuse/timings.json.
// The file keeps each machine's choices apart, a machine being the CPU (model and the instruction
// sets that matter), the LibTorch version, the choices' revision (timing_cache.cpp) and the oneDNN cap
// (ONEDNN_MAX_CPU_ISA): a run under ONEDNN_MAX_CPU_ISA=AVX2 (to see another CPU's kernels) or from
// another machine sharing the home directory adds its own and leaves the others'.
// DIFFUSE_TIMING_CACHE=0 turns it off (the test suite runs so); deleting the file re-times.
// A file that cannot be read or written costs a warning, never a failure.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>

namespace diffuse {

// One machine's choices (key → small integer) in a file that may hold other machines' too.
class TimingCacheFile {
 public:
  TimingCacheFile(std::string path, std::string machine);

  // The kept choice for `key`, read from the file on first use.
  std::optional<int64_t> find(const std::string& key);
  // Keeps `value` for `key` and rewrites the file (merged with what other processes wrote since).
  void store(const std::string& key, int64_t value);

 private:
  using Machines = std::map<std::string, std::map<std::string, int64_t>>;  // signature → choices
  // Every machine's choices in the file (none where it is missing; a warning where it is unreadable).
  Machines read_machines(bool warn) const;

  std::string path_, machine_;
  std::mutex mutex_;
  bool loaded_ = false, warned_ = false;
  std::map<std::string, int64_t> choices_;
};

// This machine's signature: CPU model and flags, LibTorch version, choices' revision, ONEDNN_MAX_CPU_ISA.
std::string timing_machine_signature();

// The process's cache (the path above, in util/environment.h's cache_directory()), or null where it
// is off or no directory is known.
TimingCacheFile* process_timing_cache();

}  // namespace diffuse
