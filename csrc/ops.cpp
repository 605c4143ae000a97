// Schemas and registrations of the mmattn operators; the Python module `mmattn._C`.
//
// Autograd of the fused ops is C++ (autograd.cpp); fake (meta) kernels, and conv3x3's autograd,
// are registered from Python (mmattn/functional.py).
#include <Python.h>
#include <torch/extension.h>
#include <torch/library.h>

#include "dropout_mask.h"
#include "norm_tiling.h"
#include "ops.h"
#include "rs_index.h"

namespace mmattn {

TORCH_LIBRARY(mmattn, m) {
  m.def("segment_attention_fwd(Tensor q, Tensor k, Tensor v, int segments, int window, "
        "int shift, float scale) -> (Tensor, Tensor)");
  m.def("segment_attention_bwd(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, "
        "Tensor lse, int segments, int window, int shift, float scale) -> (Tensor, Tensor, Tensor)");
  m.def("group_norm_act_fwd(Tensor x, int num_groups, Tensor? weight, Tensor? bias, "
        "Tensor? scale, Tensor? shift, bool silu, float eps, int channel_dim) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("group_norm_act_bwd(Tensor grad_y, Tensor x, Tensor mean, Tensor rstd, int num_groups, "
        "Tensor? weight, Tensor? bias, Tensor? scale, Tensor? shift, bool silu, int channel_dim) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("dropout(Tensor x, float p, int seed) -> Tensor");
  m.def("conv3x3_same(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def("conv3x3_same_weight_grad(Tensor grad_y, Tensor x) -> Tensor");
}

TORCH_LIBRARY_IMPL(mmattn, CPU, m) {
  m.impl("segment_attention_fwd", &segment_attention_fwd_cpu);
  m.impl("segment_attention_bwd", &segment_attention_bwd_cpu);
  m.impl("group_norm_act_fwd", &group_norm_act_fwd_cpu);
  m.impl("group_norm_act_bwd", &group_norm_act_bwd_cpu);
  m.impl("dropout", &dropout_cpu);
  m.impl("conv3x3_same", &conv3x3_same_cpu);
  m.impl("conv3x3_same_weight_grad", &conv3x3_same_weight_grad_cpu);
}

#ifdef MMATTN_WITH_CUDA
TORCH_LIBRARY_IMPL(mmattn, CUDA, m) {
  m.impl("segment_attention_fwd", &segment_attention_fwd_cuda);
  m.impl("segment_attention_bwd", &segment_attention_bwd_cuda);
  m.impl("group_norm_act_fwd", &group_norm_act_fwd_cuda);
  m.impl("group_norm_act_bwd", &group_norm_act_bwd_cuda);
  m.impl("dropout", &dropout_cuda);
}
#endif

}  // namespace mmattn

// The index helpers shared with the CUDA kernels, exposed for CPU unit tests.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "mmattn compiled operators (registered as torch.ops.mmattn.*)";
#ifdef MMATTN_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  m.attr("cuda_max_head_dim") = mmattn::kCudaMaxHeadDim;
  m.attr("cuda_max_batch_heads") = mmattn::kCudaMaxBatchHeads;
  // The CPU block cache (cpu/block_cache.h), wrapped by mmattn/cpu_cache.py.
  m.def("cpu_cache_stats", [] {
    const mmattn::CpuCacheStats s = mmattn::cpu_cache_stats();
    return std::make_tuple(s.cached_bytes, s.limit_bytes, s.hits, s.misses);
  }, "(cached_bytes, limit_bytes, hits, misses)");
  m.def("set_cpu_cache_limit", &mmattn::set_cpu_cache_limit, "keep at most this many bytes of free blocks");
  m.def("empty_cpu_cache", &mmattn::empty_cpu_cache, "free every cached block");
  m.def("segment_begin", &mmattn::segment_begin, "floor(j * n / segments)");
  m.def("segment_of", &mmattn::segment_of, "segment of token t");
  m.def("window_key_ranges", [](int64_t i, int64_t n_key, int64_t segments, int64_t window,
                                int64_t shift) {
    auto r = mmattn::window_key_ranges(i, n_key, segments, window,
                                       mmattn::wrap_shift(shift, segments));
    std::vector<std::pair<int64_t, int64_t>> out;
    for (int c = 0; c < r.count; ++c) out.emplace_back(r.begin[c], r.len[c]);
    return out;
  }, "[(begin, length), ...]: the at most two key ranges of query segment i's window");
  m.def("query_segment_seeing", &mmattn::query_segment_seeing,
        "k-th query segment whose window holds key segment j");
  // Helpers of the tiled CUDA kernels (tests/test_index_cuda_helpers.py).
  m.def("transposed_shift", &mmattn::transposed_shift,
        "shift whose windows are the query segments that see each key segment");
  m.def("window_union_tiles", [](int64_t i0, int64_t i1, int64_t n_key, int64_t segments,
                                 int64_t window, int64_t shift, int64_t tile) {
    const auto r = mmattn::window_union_ranges(i0, i1, n_key, segments, window,
                                               mmattn::wrap_shift(shift, segments));
    std::vector<std::pair<int64_t, int64_t>> out;
    for (int64_t t = 0; t < mmattn::range_tiles(r, tile); ++t) {
      int64_t begin = 0, len = 0;
      mmattn::range_tile(r, tile, t, &begin, &len);
      out.emplace_back(begin, len);
    }
    return out;
  }, "[(begin, length), ...]: tiles of the union of the windows of segments i0..i1");
  m.def("row_tiling", [](int64_t rows, int cols, int threads, int64_t target_blocks, int64_t min_rows) {
    const auto t = mmattn::make_row_tiling(rows, cols, threads, target_blocks, min_rows);
    return std::make_tuple(t.tile_cols, t.rows_per_pass, t.col_tiles, t.chunks);
  }, "(tile_cols, rows_per_pass, col_tiles, chunks) of the channels-innermost GroupNorm kernels");
  m.def("row_tiling_visits", [](int64_t rows, int cols, int threads, int64_t target_blocks,
                                int64_t min_rows) {
    // the kernels' walk: block (chunk, column tile), thread t -> rows p0 + lane, + rows_per_pass...
    const auto t = mmattn::make_row_tiling(rows, cols, threads, target_blocks, min_rows);
    std::vector<int64_t> visits(rows * cols, 0);
    for (int64_t k = 0; k < t.chunks; ++k) {
      for (int tile = 0; tile < t.col_tiles; ++tile) {
        for (int th = 0; th < threads; ++th) {
          if (!t.active(tile, th)) continue;
          for (int64_t p = t.chunk_begin(k) + t.row_lane_of(th); p < t.chunk_begin(k + 1); p += t.rows_per_pass) {
            ++visits[p * cols + t.col_of(tile, th)];
          }
        }
      }
    }
    return visits;
  }, "visits of each (row, column) by the channels-innermost GroupNorm kernels' threads, row-major");
  m.def("window_contains", [](int64_t i, int64_t n_key, int64_t segments, int64_t window,
                              int64_t shift, int64_t t0, int64_t t1) {
    const auto r = mmattn::window_key_ranges(i, n_key, segments, window,
                                             mmattn::wrap_shift(shift, segments));
    const auto w = mmattn::Window32::of(r);
    return std::make_pair(w.contains(static_cast<int>(t0)), w.covers(static_cast<int>(t0), static_cast<int>(t1)));
  }, "(token t0 in the window of segment i, tokens [t0, t1) inside one of its ranges: Window32, "
     "as the CUDA kernels mask tiles)");
}
