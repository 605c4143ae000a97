"""The cache of large CPU blocks behind the outputs of mmattn's CPU kernels (csrc/cpu/block_cache.h).

A fresh page costs a page fault on first touch (about 2 us per 4 KiB page on the 2-core VM we
measure on, ten times what a kernel takes to write it), and glibc hands out fresh pages for
every block of 32 MiB or more. A training step allocates the same sizes step after step, so the
blocks of mmattn's CPU outputs (GroupNorm, dropout, segment attention, the 3x3 convolution),
1 MiB or more each, are kept when freed and handed out again, like the CUDA caching allocator.
Only mmattn's own outputs use it; nothing else in the process is affected.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch  # noqa: F401  (loads the libraries mmattn._C links against)

from mmattn import _C

__all__ = ["CpuCacheStats", "cpu_cache_stats", "set_cpu_cache_limit", "empty_cpu_cache"]


@dataclass(frozen=True)
class CpuCacheStats:
    cached_bytes: int  # free blocks held now
    limit_bytes: int   # most free bytes held (default 2 GiB)
    hits: int          # requests served from the cache
    misses: int        # requests of 1 MiB or more that allocated afresh


def cpu_cache_stats() -> CpuCacheStats:
    """The cache's counters since the process started."""
    return CpuCacheStats(*_C.cpu_cache_stats())


def set_cpu_cache_limit(nbytes: int) -> None:
    """Hold at most `nbytes` of free blocks (0: cache nothing); frees what is over it now."""
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"nbytes must be a non-negative int, got {nbytes!r}")
    _C.set_cpu_cache_limit(nbytes)


def empty_cpu_cache() -> None:
    """Free every cached block (blocks still in use are not affected), e.g. before measuring
    peak memory or handing memory back to other code."""
    _C.empty_cpu_cache()
