// Process-wide runtime settings (runtime/device.h, runtime/large_block_cache.h): freed tensor
// memory must be reused without the page faults that freshly mapped memory costs on every step;
// the switches (runtime/settings.h) are read once, and again after an EnvironmentSwitch, and a value
// a switch does not take is refused naming it.
#include <gtest/gtest.h>

#include <sys/resource.h>

#include <cstdlib>
#include <tuple>
#include <vector>

#include "diffuse/runtime/device.h"
#include "diffuse/runtime/large_block_cache.h"
#include "diffuse/runtime/settings.h"
#include "diffuse/util/environment.h"

#include <c10/core/CPUAllocator.h>

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

// Blocks over glibc's largest mmap threshold (32 MiB): mapped afresh on every step without the
// cache, served from the last step's freed blocks with it.
TEST(Runtime, LargeTensorsReuseTheLastStepsMemoryWithoutPageFaults) {
  if (!diffuse::cache_large_cpu_blocks()) GTEST_SKIP() << "DIFFUSE_LARGE_BLOCK_CACHE=0";
  auto step = [] {
    std::vector<torch::Tensor> activations;
    for (int i = 0; i < 4; ++i) activations.push_back(torch::full({10'000'000}, float(i)));  // 4 × 40 MB, touched
    for (int i = 0; i < 4; ++i) EXPECT_EQ(activations[i][9'999'999].item<float>(), float(i));
  };
  step();
  const auto before = diffuse::large_block_cache_stats();
  const long faults_before = minor_page_faults();
  for (int i = 0; i < 3; ++i) step();
  const long faults = minor_page_faults() - faults_before;
  const auto after = diffuse::large_block_cache_stats();
  // faulting them in again: 3 × 160 MB / 4 KiB = 117,187 faults
  EXPECT_LT(faults, 117'187 / 10) << faults << " minor page faults in 3 steps";
  EXPECT_EQ(after.served - before.served, 12u);
  EXPECT_EQ(after.reused - before.reused, 12u);
  EXPECT_GE(after.idle_bytes, 4u * 40'000'000u);

  // released: the next step maps (and faults) its blocks afresh, and they are not reused
  EXPECT_EQ(diffuse::release_idle_large_blocks(), after.idle_bytes);
  EXPECT_EQ(diffuse::large_block_cache_stats().idle_bytes, 0u);
  step();
  EXPECT_EQ(diffuse::large_block_cache_stats().reused, after.reused);
}

// raw_allocate/raw_deallocate (LibTorch's own helpers use them) go through the cache's raw
// deleter, for small blocks (LibTorch's allocator's) and large ones alike.
TEST(Runtime, RawAllocationsOfAnySizeAreFreedByTheCache) {
  if (!diffuse::cache_large_cpu_blocks()) GTEST_SKIP() << "DIFFUSE_LARGE_BLOCK_CACHE=0";
  c10::Allocator* allocator = c10::GetCPUAllocator();
  void* small = allocator->raw_allocate(1000);
  allocator->raw_deallocate(small);
  const auto idle_before = diffuse::large_block_cache_stats().idle_bytes;
  void* large = allocator->raw_allocate(diffuse::kLargeBlockBytes + 64);
  static_cast<char*>(large)[diffuse::kLargeBlockBytes] = 1;
  allocator->raw_deallocate(large);
  EXPECT_EQ(diffuse::large_block_cache_stats().idle_bytes, idle_before + diffuse::kLargeBlockBytes + 64);
}

TEST(RuntimeSettings, AreReadOnceAndAgainAfterAnEnvironmentSwitch) {
  const bool before = diffuse::runtime_settings().fused_cat;
  {
    diffuse::EnvironmentSwitch off("DIFFUSE_FUSED_CAT", "0", /*on=*/true);
    EXPECT_FALSE(diffuse::runtime_settings().fused_cat);
    off.set(false);
    EXPECT_EQ(diffuse::runtime_settings().fused_cat, before);
    off.set(true);
    EXPECT_FALSE(diffuse::runtime_settings().fused_cat);
  }
  EXPECT_EQ(diffuse::runtime_settings().fused_cat, before);
  // A variable changed behind the settings' back is not read on the next call: no kernel call
  // reads the environment.
  if (std::getenv("DIFFUSE_CUDA_UPSAMPLE") == nullptr) {
    const bool upsample = diffuse::runtime_settings().cuda_upsample;
    setenv("DIFFUSE_CUDA_UPSAMPLE", "0", 1);
    EXPECT_EQ(diffuse::runtime_settings().cuda_upsample, upsample);
    unsetenv("DIFFUSE_CUDA_UPSAMPLE");
  }
}

TEST(RuntimeSettings, AValueASwitchDoesNotTakeIsRefusedNamingIt) {
  for (const auto& [name, value, expected] :
       {std::tuple{"DIFFUSE_CHANNEL_BLOCK", "12", "DIFFUSE_CHANNEL_BLOCK=12: expected 8 or 16"},
        std::tuple{"DIFFUSE_FUSED_CAT", "off", "DIFFUSE_FUSED_CAT=off: expected 0 or 1"},
        std::tuple{"DIFFUSE_CONV_ALGORITHM", "fft", "DIFFUSE_CONV_ALGORITHM=fft: expected direct or winograd"}}) {
    diffuse::EnvironmentSwitch bad(name, value, /*on=*/true);
    try {
      diffuse::runtime_settings();
      ADD_FAILURE() << name << "=" << value << " was taken";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
    }
  }
  diffuse::EnvironmentSwitch empty("DIFFUSE_CHANNEL_BLOCK", "", /*on=*/true);  // set empty: as unset
  EXPECT_EQ(diffuse::runtime_settings().channel_block, 0);
  diffuse::EnvironmentSwitch eight("DIFFUSE_CHANNEL_BLOCK", "8", /*on=*/true);
  EXPECT_EQ(diffuse::runtime_settings().channel_block, 8);
}
