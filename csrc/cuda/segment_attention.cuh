// Shared pieces of the CUDA segment attention kernels (forward and backward): kernel
// parameters, per-row windows, K/V tile loading, and the host-side input preparation.
//
// Two kernel families:
//  - tensor-core kernels (bfloat16/float16, head dim 32/64/128): a CTA of 4 warps owns a tile
//    of 64 consecutive rows (each warp 16); the rows may span several segments, so the CTA
//    walks the union of their windows (at most two contiguous token ranges, see
//    window_union_ranges) in tiles and masks the pairs outside each row's own window;
//  - generic kernels (float32, float64, and 16-bit types with other head dims <= 256): one
//    warp per row, walking exactly the row's window; scalar FMA arithmetic.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <limits>

#include "device_utils.cuh"
#include "rs_index.h"

namespace mmattn::cuda {

constexpr int kMaxGenericHeadDim = kCudaMaxHeadDim;

// Rows of a [B, H, N, D] tensor with unit D stride: element strides of B, H and N.
struct RowsArg {
  const void* ptr;
  int64_t sb, sh, sn;
};

template <typename T>
__device__ __forceinline__ const T* rows_of(const RowsArg& a, int b, int h) {
  return static_cast<const T*>(a.ptr) + b * a.sb + h * a.sh;
}

template <typename T>
__device__ __forceinline__ T* mutable_rows_of(const RowsArg& a, int b, int h) {
  return const_cast<T*>(static_cast<const T*>(a.ptr)) + b * a.sb + h * a.sh;
}

// Index maths of one direction: n_q query tokens, n_k key tokens, both cut into `segments`;
// `shift` is wrapped into [0, segments) and `tshift` = transposed_shift(shift, window, S).
struct Geometry {
  int n_q, n_k, heads, segments, window, shift, tshift;
};

// Window (over n_k keys) of query row r, or (transposed) the queries that see key row r.
__device__ __forceinline__ KeyRanges query_row_window(const Geometry& g, int r) {
  return window_key_ranges(segment_of(r, g.n_q, g.segments), g.n_k, g.segments, g.window,
                           g.shift);
}
__device__ __forceinline__ KeyRanges key_row_window(const Geometry& g, int r) {
  return window_key_ranges(segment_of(r, g.n_k, g.segments), g.n_q, g.segments, g.window,
                           g.tshift);
}

// Union of the windows of query rows [r0, r1) (over keys), or of key rows (over queries).
__device__ __forceinline__ KeyRanges query_tile_keys(const Geometry& g, int r0, int r1) {
  return window_union_ranges(segment_of(r0, g.n_q, g.segments),
                             segment_of(r1 - 1, g.n_q, g.segments), g.n_k, g.segments, g.window,
                             g.shift);
}
__device__ __forceinline__ KeyRanges key_tile_queries(const Geometry& g, int r0, int r1) {
  return window_union_ranges(segment_of(r0, g.n_k, g.segments),
                             segment_of(r1 - 1, g.n_k, g.segments), g.n_q, g.segments, g.window,
                             g.tshift);
}

// Tensor-core tiles: shared rows are padded by 8 elements (16 bytes), so the 8 row
// addresses of each ldmatrix fall in distinct bank groups.
template <int D>
struct Pitch {
  static constexpr int value = D + 8;
};

// Asynchronously copies rows [0, ROWS) of a tile (row r at g + r * stride, D 16-bit
// elements) into shared memory with pitch D + 8; rows >= valid are zero-filled.
// `g` must point at a real row (valid >= 1).
template <typename T, int D, int ROWS, int THREADS>
__device__ __forceinline__ void load_tile_async(T* s, const T* g, int64_t stride, int valid) {
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  static_assert((ROWS * kChunks) % THREADS == 0, "tile must split evenly over the threads");
#pragma unroll
  for (int j = 0; j < ROWS * kChunks / THREADS; ++j) {
    const int i = threadIdx.x + j * THREADS;
    const int r = i / kChunks, c = i % kChunks;
    const bool ok = r < valid;
    cp_async_16(s + r * Pitch<D>::value + c * 8, ok ? g + r * stride + c * 8 : g, ok);
  }
}

// ---- host side ---------------------------------------------------------------------------

// Checks shared by the forward and backward entry points; returns the geometry.
Geometry check_segment_attention(const char* op, const at::Tensor& q, const at::Tensor& k,
                                 const at::Tensor& v, int64_t segments, int64_t window,
                                 int64_t shift);

// Whether the tensor-core kernels take this dtype and head dim.
bool tensor_core_path(const at::Tensor& q);

// `t` with unit D stride (and, for the tensor-core kernels, a 16-byte aligned start and row
// strides); otherwise a contiguous copy.
at::Tensor rows_ready(const at::Tensor& t, bool tensor_cores);

RowsArg rows_arg(const at::Tensor& t);

// An output with the strides of empty_rows_like(like) (what the fake kernels promise); the kernels
// write `work`: the result itself when its rows are usable, else a contiguous stand-in that
// finish() copies back.
struct Output {
  at::Tensor result, work;
  Output(const at::Tensor& like, bool tensor_cores);
  at::Tensor finish();
};

}  // namespace mmattn::cuda
