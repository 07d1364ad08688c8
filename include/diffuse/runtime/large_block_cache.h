// LibTorch's CPU allocations of 32 MiB and more, kept for the next request of the same size.
//
// glibc serves blocks that large with mmap and returns them to the kernel on free, whatever
// M_MMAP_THRESHOLD says (32 MiB is its largest), so a network whose activations pass that size
// (ddpm-cifar10 at batch 64: 33.5 MB per 128-channel 32×32 tensor) faulted every page of every
// such tensor in again on every step: 0.8–1 million page faults a step, and about a third of the
// step's time (docs/PERFORMANCE.md). A step asks for the same sizes in the same order each time, so from
// the second step on every large request is served from the blocks the last step freed.
//
// Idle blocks are kept up to a quarter of the machine's memory; past that a freed block goes back
// to the system. Built for LibTorch 1.x and 2.x (2.3 changed c10::Allocator's interface).
#pragma once

#include <cstddef>

namespace diffuse {

// Puts the cache in front of LibTorch's CPU allocator, once per process. Returns whether it is in
// place (false with the environment variable DIFFUSE_LARGE_BLOCK_CACHE=0).
bool cache_large_cpu_blocks();

// Hands the idle blocks back to the system (for a program that is done with large tensors of
// some shapes, like CUDA's empty_cache). Returns the bytes released.
size_t release_idle_large_blocks();

struct LargeBlockCacheStats {
  size_t idle_bytes = 0;  // held for reuse now
  size_t served = 0;      // large requests so far
  size_t reused = 0;      // of those, served from an idle block
};
LargeBlockCacheStats large_block_cache_stats();

// The smallest request the cache takes.
constexpr size_t kLargeBlockBytes = size_t{32} << 20;

}  // namespace diffuse
