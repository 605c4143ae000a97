// The CPU block cache (block_cache.h).
#include "block_cache.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <map>
#include <mutex>
#include <unordered_map>

namespace mmattn {
namespace {

class BlockCache final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    if (n < static_cast<size_t>(kMinCachedBytes)) return c10::GetCPUAllocator()->allocate(n);
    void* p = take(n);
    if (p == nullptr) {
      p = c10::alloc_cpu(n);  // outside the lock: first touches happen in the kernels anyway
      std::lock_guard<std::mutex> lock(mutex_);
      in_use_.emplace(p, n);
    }
    c10::profiledCPUMemoryReporter().New(p, n);  // as torch's CPU allocator: the profiler sees it
    return {p, p, &release, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  CpuCacheStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {cached_, limit_, hits_, misses_};
  }

  void set_limit(int64_t bytes) {
    TORCH_CHECK(bytes >= 0, "set_cpu_cache_limit: bytes must be >= 0, got ", bytes);
    std::lock_guard<std::mutex> lock(mutex_);
    limit_ = bytes;
    trim_locked(limit_);
  }

  void empty() {
    std::lock_guard<std::mutex> lock(mutex_);
    trim_locked(0);
  }

  static BlockCache& get() {
    static BlockCache* cache = new BlockCache();  // never destroyed: tensors may outlive statics
    return *cache;
  }

 private:
  // The smallest free block of size in [n, n + n/4], moved to in_use_; nullptr if none.
  void* take(size_t n) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = free_.lower_bound(n);
    if (it == free_.end() || it->first > n + n / 4) {
      ++misses_;
      return nullptr;
    }
    ++hits_;
    void* p = it->second;
    cached_ -= static_cast<int64_t>(it->first);
    in_use_.emplace(p, it->first);
    free_.erase(it);
    return p;
  }

  static void release(void* p) {
    c10::profiledCPUMemoryReporter().Delete(p);
    BlockCache& cache = get();
    std::unique_lock<std::mutex> lock(cache.mutex_);
    auto it = cache.in_use_.find(p);  // always there: this deleter is only given to blocks in it
    const size_t size = it->second;
    cache.in_use_.erase(it);
    if (cache.cached_ + static_cast<int64_t>(size) <= cache.limit_) {
      cache.free_.emplace(size, p);
      cache.cached_ += static_cast<int64_t>(size);
      return;
    }
    lock.unlock();
    c10::free_cpu(p);
  }

  // Frees free blocks, largest first, until at most `bytes` are cached.
  void trim_locked(int64_t bytes) {
    while (cached_ > bytes && !free_.empty()) {
      auto last = std::prev(free_.end());
      cached_ -= static_cast<int64_t>(last->first);
      c10::free_cpu(last->second);
      free_.erase(last);
    }
  }

  std::mutex mutex_;
  std::multimap<size_t, void*> free_;         // size -> free block
  std::unordered_map<void*, size_t> in_use_;  // block -> size
  int64_t cached_ = 0;
  int64_t limit_ = int64_t(2) << 30;
  int64_t hits_ = 0, misses_ = 0;
};

const c10::DispatchKeySet kCpuKeys(c10::DispatchKey::CPU);

}  // namespace

at::Tensor empty_like_cached(const at::Tensor& like) {
  if (like.is_non_overlapping_and_dense())
    return at::detail::empty_strided_generic(like.sizes(), like.strides(), &BlockCache::get(),
                                             kCpuKeys, like.scalar_type());
  return at::detail::empty_generic(like.sizes(), &BlockCache::get(), kCpuKeys, like.scalar_type(),
                                   like.suggest_memory_format());
}

at::Tensor empty_cached(at::IntArrayRef sizes, const at::TensorOptions& options, at::MemoryFormat format) {
  return at::detail::empty_generic(sizes, &BlockCache::get(), kCpuKeys,
                                   c10::typeMetaToScalarType(options.dtype()), format);
}

CpuCacheStats cpu_cache_stats() { return BlockCache::get().stats(); }
void set_cpu_cache_limit(int64_t bytes) { BlockCache::get().set_limit(bytes); }
void empty_cpu_cache() { BlockCache::get().empty(); }

}  // namespace mmattn
