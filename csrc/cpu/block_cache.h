// A cache of large CPU memory blocks for the outputs of mmattn's CPU kernels.
//
// glibc gives every block of 32 MiB or more (and, after trimming, others) fresh pages, and a
// fresh page costs a page fault on first touch: on the 2-core VM we measure on, about 2 us
// per 4 KiB page, ten times what a kernel takes to write it. A training step allocates the
// same sizes step after step, so blocks freed here are kept and handed out again instead
// (like the CUDA caching allocator, for this library's own outputs only: nothing else in the
// process is affected).
//
// Blocks of at least kMinCachedBytes are cached; smaller requests go to torch's CPU allocator.
// A request takes the smallest free block of at least its size and at most 1/4 larger. The
// cache keeps at most `limit` bytes of free blocks (set_cpu_cache_limit; 0 turns caching off)
// and frees blocks beyond that.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/MemoryFormat.h>

#include <cstdint>

namespace mmattn {

constexpr int64_t kMinCachedBytes = int64_t(1) << 20;

// A new CPU tensor of `like`'s shape and dtype with the strides at::empty_like(like) gives it
// (like's own when dense), its memory from the cache.
at::Tensor empty_like_cached(const at::Tensor& like);
// A new CPU tensor of `sizes` in `format`, with `options`' dtype, its memory from the cache.
at::Tensor empty_cached(at::IntArrayRef sizes, const at::TensorOptions& options,
                        at::MemoryFormat format = at::MemoryFormat::Contiguous);

struct CpuCacheStats {
  int64_t cached_bytes;  // free blocks held now
  int64_t limit_bytes;
  int64_t hits;          // requests served from the cache
  int64_t misses;        // requests of cacheable size that allocated afresh
};
CpuCacheStats cpu_cache_stats();
void set_cpu_cache_limit(int64_t bytes);  // also frees what the new limit does not allow
void empty_cpu_cache();                   // frees every free block

}  // namespace mmattn
