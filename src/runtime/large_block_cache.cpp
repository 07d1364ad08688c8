#include "diffuse/runtime/large_block_cache.h"
#include "diffuse/runtime/settings.h"


#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <torch/version.h>
#include <unistd.h>

#include <atomic>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace diffuse {

// LibTorch 2.3 changed c10::Allocator: allocate is no longer const, and copy_data (used by
// clone and copy-on-write) must be given. Earlier 2.x releases keep the 1.x interface.
#define DIFFUSE_ALLOCATOR_2_3 (TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 3))
#if DIFFUSE_ALLOCATOR_2_3
#define DIFFUSE_ALLOCATE_CONST
#else
#define DIFFUSE_ALLOCATE_CONST const
#endif

namespace {

// Requests under kLargeBlockBytes go to LibTorch's own allocator; larger ones are served from an
// idle block of exactly that size where there is one, else from c10::alloc_cpu (aligned, with
// LibTorch's out-of-memory message). A freed large block becomes an idle one. The data pointer is
// its own deleter context (so raw_allocate/raw_deallocate work too); the sizes are looked up.
class LargeBlockCache final : public c10::Allocator {
 public:
  LargeBlockCache(c10::Allocator* small_blocks, size_t max_idle_bytes)
      : small_blocks_(small_blocks), max_idle_bytes_(max_idle_bytes) {}

  c10::DataPtr allocate(size_t bytes) DIFFUSE_ALLOCATE_CONST override {
    if (bytes < kLargeBlockBytes) return small_blocks_->allocate(bytes);
    void* data = take_idle(bytes);
    if (data == nullptr) {
      data = c10::alloc_cpu(bytes);
      std::lock_guard<std::mutex> lock(mutex_);
      sizes_[data] = bytes;
    }
    return {data, data, &release, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release; }

#if DIFFUSE_ALLOCATOR_2_3
  void copy_data(void* destination, const void* source, size_t bytes) const override {
    default_copy_data(destination, source, bytes);  // plain host memory: a memcpy
  }
#endif

  LargeBlockCacheStats stats() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_;
  }

  size_t release_idle() const {
    std::vector<void*> blocks;
    size_t bytes = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto& [size, idle] : idle_) {
        for (void* data : idle) {
          blocks.push_back(data);
          sizes_.erase(data);
          bytes += size;
        }
      }
      idle_.clear();
      stats_.idle_bytes = 0;
    }
    for (void* data : blocks) c10::free_cpu(data);
    return bytes;
  }

  static std::atomic<const LargeBlockCache*> installed;

 private:
  void* take_idle(size_t bytes) const {
    std::lock_guard<std::mutex> lock(mutex_);
    ++stats_.served;
    auto it = idle_.find(bytes);
    if (it == idle_.end() || it->second.empty()) return nullptr;
    void* data = it->second.back();
    it->second.pop_back();
    stats_.idle_bytes -= bytes;
    ++stats_.reused;
    return data;
  }

  // The deleter of large blocks, and the raw deleter of all: raw_allocate hands out small blocks
  // from LibTorch's allocator too, which raw_deallocate then frees through this.
  static void release(void* data) {
    const LargeBlockCache& cache = *installed.load();
    enum { kept, large, small } fate = small;
    {
      std::lock_guard<std::mutex> lock(cache.mutex_);
      if (const auto it = cache.sizes_.find(data); it != cache.sizes_.end()) {
        const size_t bytes = it->second;
        if (cache.stats_.idle_bytes + bytes <= cache.max_idle_bytes_) {
          cache.idle_[bytes].push_back(data);
          cache.stats_.idle_bytes += bytes;
          fate = kept;
        } else {
          cache.sizes_.erase(it);
          fate = large;
        }
      }
    }
    if (fate == large) c10::free_cpu(data);
    if (fate == small) {
      const auto small_deleter = cache.small_blocks_->raw_deleter();
      (small_deleter != nullptr ? small_deleter : &c10::free_cpu)(data);
    }
  }

  c10::Allocator* small_blocks_;
  size_t max_idle_bytes_;
  mutable std::mutex mutex_;
  mutable std::unordered_map<void*, size_t> sizes_;               // every large block out or idle
  mutable std::unordered_map<size_t, std::vector<void*>> idle_;  // by exact size
  mutable LargeBlockCacheStats stats_;
};

std::atomic<const LargeBlockCache*> LargeBlockCache::installed{nullptr};

// A quarter of the machine's memory.
size_t idle_limit() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? static_cast<size_t>(pages) * static_cast<size_t>(page) / 4 : size_t{4} << 30;
}

}  // namespace

bool cache_large_cpu_blocks() {
  // made once and never destroyed: tensors may outlive everything else
  static const bool in_place = [] {
    if (!runtime_settings().large_block_cache) return false;
    auto* cache = new LargeBlockCache(c10::GetCPUAllocator(), idle_limit());
    LargeBlockCache::installed = cache;
    c10::SetCPUAllocator(cache, /*priority=*/1);  // above LibTorch's own default (0)
    return true;
  }();
  return in_place;
}

LargeBlockCacheStats large_block_cache_stats() {
  const auto* cache = LargeBlockCache::installed.load();
  return cache ? cache->stats() : LargeBlockCacheStats{};
}

size_t release_idle_large_blocks() {
  const auto* cache = LargeBlockCache::installed.load();
  return cache ? cache->release_idle() : 0;
}

}  // namespace diffuse
