// Process-wide runtime settings (runtime/device.h): keep_freed_memory_for_reuse must stop the
// page faults that freshly mapped tensor memory costs on every step.
#include <gtest/gtest.h>

#include <sys/resource.h>

#include <cstdlib>
#include <vector>

#include "diffuse/runtime/device.h"

namespace {

long minor_page_faults() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_minflt;
}

// What a network step does to the allocator: several large tensors alive at once, then all freed.
void allocate_like_a_step() {
  std::vector<torch::Tensor> activations;
  for (int i = 0; i < 8; ++i) activations.push_back(torch::ones({3'000'000}));  // 8 × 12 MB, touched
}

}  // namespace

TEST(Runtime, FreedTensorMemoryIsReusedWithoutPageFaults) {
  if (!diffuse::keep_freed_memory_for_reuse()) GTEST_SKIP() << "not glibc, or malloc set by the environment";
  // The first steps fault their memory in (and fragment the heap until it settles: 3 steps here).
  for (int step = 0; step < 5; ++step) allocate_like_a_step();
  const long before = minor_page_faults();
  for (int step = 0; step < 4; ++step) allocate_like_a_step();
  const long faults = minor_page_faults() - before;
  // Faulting the memory in again would take 4 × 96 MB / 4 KiB = 98,304 faults (glibc's defaults:
  // about 82,000 here; with the settings: none).
  EXPECT_LT(faults, 98'304 / 10) << faults << " minor page faults in 4 steps";
}
