// Tiling of a channels-innermost GroupNorm input for the CUDA kernels (host and device code,
// unit-tested on the CPU through mmattn._C).
//
// The input is viewed per sample as rows x columns: a row is one position (frame, pixel), a
// column one vector of V contiguous channels, so a row holds cols = C / V columns. A block of
// `threads` threads covers `tile_cols` columns of `rows_per_pass` rows at a time (thread t: column
// t % tile_cols, row lane t / tile_cols; threads past rows_per_pass * tile_cols idle), walks the
// rows of one chunk rows_per_pass apart, and the grid is (chunk, column tile, sample).
#pragma once

#include <cstdint>

#include "rs_index.h"  // MMATTN_HOST_DEVICE

namespace mmattn {

struct RowTiling {
  int64_t rows;       // positions per sample
  int cols;           // vector columns per row
  int tile_cols;      // columns per block
  int rows_per_pass;  // rows a block covers per step
  int col_tiles;      // blocks across a row
  int chunks;         // row chunks per sample

  // First row of chunk k (0 <= k <= chunks): balanced, floor(k * rows / chunks).
  MMATTN_HOST_DEVICE int64_t chunk_begin(int64_t k) const { return k * rows / chunks; }
  // Column of thread t in column tile `tile`; may be >= cols (then the thread idles).
  MMATTN_HOST_DEVICE int col_of(int tile, int t) const { return tile * tile_cols + t % tile_cols; }
  // Row lane of thread t; >= rows_per_pass means the thread idles.
  MMATTN_HOST_DEVICE int row_lane_of(int t) const { return t / tile_cols; }
  MMATTN_HOST_DEVICE bool active(int tile, int t) const {
    return row_lane_of(t) < rows_per_pass && col_of(tile, t) < cols;
  }
};

// Tiling for `rows` rows of `cols` columns with blocks of `threads` threads, cut into about
// `target_blocks` blocks per sample, each thread keeping at least `min_rows` rows.
MMATTN_HOST_DEVICE RowTiling make_row_tiling(int64_t rows, int cols, int threads,
                                             int64_t target_blocks, int64_t min_rows) {
  RowTiling t{};
  t.rows = rows;
  t.cols = cols;
  t.tile_cols = cols < threads ? cols : threads;
  t.rows_per_pass = threads / t.tile_cols;
  t.col_tiles = (cols + t.tile_cols - 1) / t.tile_cols;
  const int64_t per_block = int64_t{t.rows_per_pass} * (min_rows > 0 ? min_rows : 1);
  int64_t most = (rows + per_block - 1) / per_block;  // chunks with >= min_rows per thread
  int64_t want = (target_blocks + t.col_tiles - 1) / t.col_tiles;
  int64_t chunks = want < most ? want : most;
  t.chunks = static_cast<int>(chunks < 1 ? 1 : chunks);
  return t;
}

}  // namespace mmattn
