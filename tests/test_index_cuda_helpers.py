"""Index helpers of the tiled CUDA kernels (csrc/rs_index.h), checked on the CPU against Python.

A CUDA tile of consecutive rows may span several segments: it walks the union of their windows
in tiles and masks each (row, token) pair with the row's own window; the key-tile kernels use the
transposed relation (which query segments see a key segment).
"""
from functools import lru_cache

import pytest

from mmattn import _C
from mmattn.reference import segment_bounds, window_segments

SHAPES = [(12, 4), (7, 3), (400, 16), (25, 25), (101, 7), (6400, 16), (16, 1)]


@lru_cache(maxsize=None)
def window_tokens(i, n, segments, window, shift):
    bounds = segment_bounds(n, segments)
    return frozenset(t for j in window_segments(i, segments, window, shift) for t in range(bounds[j], bounds[j + 1]))


@pytest.mark.parametrize("segments", [1, 2, 5, 16])
@pytest.mark.parametrize("shift", [0, 3, -7, 1001])
def test_transposed_shift_lists_the_query_segments_seeing_a_key_segment(segments, shift):
    for window in range(1, segments + 1):
        t = _C.transposed_shift(shift, window, segments)
        assert 0 <= t < segments
        for j in range(segments):
            seers = {i for i in range(segments) if j in window_segments(i, segments, window, shift)}
            assert set(window_segments(j, segments, window, t)) == seers


@pytest.mark.parametrize("n,segments", SHAPES)
def test_union_tiles_cover_the_windows_of_a_segment_run_once(n, segments):
    for window in sorted({1, max(1, segments // 3), segments}):
        for shift in (0, 5, -2):
            for i0 in range(0, segments, max(1, segments // 5)):
                for i1 in sorted({i0, min(segments - 1, i0 + 1), min(segments - 1, i0 + 4)}):
                    for tile in (16, 64):
                        tiles = _C.window_union_tiles(i0, i1, n, segments, window, shift, tile)
                        tokens = [t for a, ln in tiles for t in range(a, a + ln)]
                        expected = set().union(*(window_tokens(i, n, segments, window, shift)
                                                 for i in range(i0, i1 + 1)))
                        assert len(tokens) == len(set(tokens))  # no token twice
                        assert set(tokens) == expected
                        assert all(1 <= ln <= tile for _, ln in tiles)
                        # range by range: at most two runs of back-to-back tiles
                        breaks = sum(a != b + lb for (b, lb), (a, _) in zip(tiles, tiles[1:]))
                        assert breaks <= 1


@pytest.mark.parametrize("n,segments", SHAPES)
def test_window_contains_and_covers(n, segments):
    for window in sorted({1, max(1, segments // 2), segments}):
        for shift in (0, 1, -3):
            for i in range(0, segments, max(1, segments // 4)):
                inside = window_tokens(i, n, segments, window, shift)
                for t0 in range(0, n, max(1, n // 37)):
                    for length in (1, 8, 64):
                        t1 = min(n, t0 + length)
                        contains, covers = _C.window_contains(i, n, segments, window, shift, t0, t1)
                        assert contains == (t0 in inside)
                        ranges = _C.window_key_ranges(i, n, segments, window, shift)
                        assert covers == any(a <= t0 and t1 <= a + ln for a, ln in ranges)
                        if covers:  # the fast path may skip masking only inside the window
                            assert set(range(t0, t1)) <= inside


# rows x vector columns of channels-innermost GroupNorm (csrc/norm_tiling.h): one 16-byte vector
# per thread and row, 8 channels in 16-bit types; paper-64 widths (C = 128..512), more columns
# than threads, a single row, more blocks wanted than rows allow
TILINGS = [(65536, 16, 2112, 4), (4096, 48, 2112, 4), (256, 64, 500, 4), (10, 16, 7, 4),
           (1, 40, 9, 4), (300, 300, 64, 4), (7, 1, 1000, 1), (97, 513, 3, 1), (1000, 12, 1, 4)]


@pytest.mark.parametrize("rows,cols,target,min_rows", TILINGS)
def test_row_tiling_visits_every_row_and_column_once(rows, cols, target, min_rows):
    threads = 256
    visits = _C.row_tiling_visits(rows, cols, threads, target, min_rows)
    assert len(visits) == rows * cols and set(visits) == {1}
    tile_cols, rows_per_pass, col_tiles, chunks = _C.row_tiling(rows, cols, threads, target, min_rows)
    assert tile_cols == min(cols, threads) and rows_per_pass == threads // tile_cols
    assert col_tiles * tile_cols >= cols > (col_tiles - 1) * tile_cols
    # about `target` blocks per sample, unless a thread would then keep fewer than min_rows rows
    most = -(-rows // (rows_per_pass * min_rows))
    assert chunks == max(1, min(-(-target // col_tiles), most))
