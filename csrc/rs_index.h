// Index maths of random-shift multi-modal attention, shared by the CPU and CUDA kernels.
//
// A sequence of N tokens is cut into S balanced segments with boundaries
// a_j = floor(j * N / S). Query segment i attends to the key segments
// W(i) = {(i + shift + k) mod S : k = 0 .. window-1}; since the window is a run of
// consecutive segments modulo S, its tokens form at most two contiguous key ranges.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define MMATTN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define MMATTN_HOST_DEVICE inline
#endif

namespace mmattn {

// Largest head dim D the CUDA kernels take (the tensor-core kernels: D = 32, 64, 128 in 16-bit
// types; a generic one-warp-per-row kernel: anything else up to this).
constexpr int kCudaMaxHeadDim = 256;
// Largest B * H the CUDA kernels take (the grid's y dimension).
constexpr int kCudaMaxBatchHeads = 65535;

// Boundary a_j = floor(j * n / segments), for 0 <= j <= segments.
MMATTN_HOST_DEVICE int64_t segment_begin(int64_t j, int64_t n, int64_t segments) {
  return j * n / segments;
}

// Segment containing token t (0 <= t < n): the largest j with floor(j n / S) <= t,
// i.e. j n < (t + 1) S, so j = floor(((t + 1) S - 1) / n).
MMATTN_HOST_DEVICE int64_t segment_of(int64_t t, int64_t n, int64_t segments) {
  return ((t + 1) * segments - 1) / n;
}

// Shift reduced into [0, segments).
MMATTN_HOST_DEVICE int64_t wrap_shift(int64_t shift, int64_t segments) {
  int64_t s = shift % segments;
  return s < 0 ? s + segments : s;
}

// Up to two contiguous token ranges [begin[r], begin[r] + len[r]) covering a window.
struct KeyRanges {
  int64_t begin[2];
  int64_t len[2];
  int count;
  MMATTN_HOST_DEVICE int64_t total() const { return len[0] + (count > 1 ? len[1] : 0); }
};

// Key token ranges of the window of query segment i over n_key tokens in `segments` segments.
// `shift` must already be wrapped into [0, segments); 1 <= window <= segments.
MMATTN_HOST_DEVICE KeyRanges window_key_ranges(int64_t i, int64_t n_key, int64_t segments,
                                               int64_t window, int64_t shift) {
  KeyRanges r;
  int64_t first = (i + shift) % segments;  // first segment of the window
  int64_t last = first + window;           // one past the last, unwrapped
  if (last <= segments) {
    r.begin[0] = segment_begin(first, n_key, segments);
    r.len[0] = segment_begin(last, n_key, segments) - r.begin[0];
    r.begin[1] = 0;
    r.len[1] = 0;
    r.count = 1;
  } else {
    r.begin[0] = segment_begin(first, n_key, segments);
    r.len[0] = n_key - r.begin[0];
    r.begin[1] = 0;
    r.len[1] = segment_begin(last - segments, n_key, segments);
    r.count = 2;
  }
  return r;
}

// The k-th query segment (k = 0 .. window-1) whose window contains key segment j:
// i = (j - shift - k) mod segments. The tests check transposed_shift's windows against it.
MMATTN_HOST_DEVICE int64_t query_segment_seeing(int64_t j, int64_t k, int64_t segments,
                                                int64_t shift) {
  int64_t i = (j - shift - k) % segments;
  return i < 0 ? i + segments : i;
}


// ---- Helpers of the tiled (CUDA) kernels ------------------------------------------------
// A tile of consecutive tokens may span several segments; it works on the union of their
// windows, and masks per token pair.

// The relation read backwards: the query segments whose windows contain key segment j are
// {(j + t + k) mod S : k < window} with t = -(shift + window - 1) mod S, i.e. the windows of
// the transposed problem. Any integer `shift`; returns t in [0, segments).
MMATTN_HOST_DEVICE int64_t transposed_shift(int64_t shift, int64_t window, int64_t segments) {
  return wrap_shift(-(wrap_shift(shift, segments) + window - 1), segments);
}

// Token ranges of the union of the windows of the consecutive segments i0 <= i1: the run of
// min(segments, i1 - i0 + window) segments starting at (i0 + shift) mod S, so again at most
// two contiguous ranges. `shift` wrapped into [0, segments).
MMATTN_HOST_DEVICE KeyRanges window_union_ranges(int64_t i0, int64_t i1, int64_t n_key,
                                                 int64_t segments, int64_t window,
                                                 int64_t shift) {
  const int64_t run = i1 - i0 + window;
  return window_key_ranges(i0, n_key, segments, run < segments ? run : segments, shift);
}

// A window's ranges as two half-open int ranges (the second possibly empty), as the CUDA
// kernels mask score tiles with them (token counts < 2^30 there).
struct Window32 {
  int b0, e0, b1, e1;
  MMATTN_HOST_DEVICE static Window32 of(const KeyRanges& r) {
    Window32 w;
    w.b0 = static_cast<int>(r.begin[0]);
    w.e0 = static_cast<int>(r.begin[0] + r.len[0]);
    w.b1 = r.count > 1 ? static_cast<int>(r.begin[1]) : 0;
    w.e1 = r.count > 1 ? static_cast<int>(r.begin[1] + r.len[1]) : 0;
    return w;
  }
  // whether token t lies in one of the ranges
  MMATTN_HOST_DEVICE bool contains(int t) const { return (t >= b0 && t < e0) || (t >= b1 && t < e1); }
  // whether the tokens [t0, t1) all lie in one of the ranges
  MMATTN_HOST_DEVICE bool covers(int t0, int t1) const {
    return (t0 >= b0 && t1 <= e0) || (t0 >= b1 && t1 <= e1);
  }
};

// Tiles of at most `tile` tokens covering the ranges, range by range: their number, and the
// first token and length of tile `index` (0 <= index < range_tiles(r, tile)). No tile
// crosses from one range into the other.
MMATTN_HOST_DEVICE int64_t range_tiles(const KeyRanges& r, int64_t tile) {
  int64_t n = (r.len[0] + tile - 1) / tile;
  if (r.count > 1) n += (r.len[1] + tile - 1) / tile;
  return n;
}

MMATTN_HOST_DEVICE void range_tile(const KeyRanges& r, int64_t tile, int64_t index,
                                   int64_t* begin, int64_t* len) {
  const int64_t first = (r.len[0] + tile - 1) / tile;  // tiles of range 0
  const bool second = index >= first;  // selects, not a run-time array index (registers on GPU)
  const int64_t start = (second ? r.begin[1] : r.begin[0]) + (second ? index - first : index) * tile;
  const int64_t end = second ? r.begin[1] + r.len[1] : r.begin[0] + r.len[0];
  *begin = start;
  *len = end - start < tile ? end - start : tile;
}

}  // namespace mmattn
