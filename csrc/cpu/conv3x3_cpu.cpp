// 'Same' 3x3 convolution (stride 1, zero padding 1) on CPU by Winograd's minimal filtering
// F(4x4, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016):
// each 4x4 output tile costs 36 multiplications per (input, output) channel pair instead of
// 144, as 36 matrix products over the channels of all tiles.
//
//   y_tile = A^T [ (G w G^T) (.) (B^T x_tile B) ] A          x_tile: 6x6, w: 3x3, y_tile: 4x4
//   dw     = G^T [ sum over tiles (B^T x_tile B) (.) (A dy_tile A^T) ] G     (its adjoint in w)
//   dx     = the same convolution of dy with w flipped and transposed (done by the caller)
//
// Tensors are channels-last ([N, H, W, C] memory): a tile's rows of channels are contiguous,
// so every transform is a loop over channels. Tiles are processed in chunks whose transformed
// buffers hold about 16 MiB together, at least 256 tiles (the matrix products' rows); the
// buffers, the transformed filter and the output come from the block cache (block_cache.h).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstring>
#include <tuple>
#include <utility>
#include <vector>

#include "block_cache.h"
#include "ops.h"

namespace mmattn {
namespace {

constexpr int kTile = 4;      // output tile side
constexpr int kIn = 6;        // input tile side (kTile + 3 - 1)
constexpr int kPoints = 36;   // kIn * kIn transformed points
constexpr int64_t kChunkBytes = 16 << 20;  // target size of one chunk's transformed tiles
constexpr int64_t kMinChunkTiles = 256;

// G (6x3): the filter transform.
constexpr double kG[6][3] = {{1.0 / 4, 0, 0},
                             {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                             {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                             {1.0 / 24, 1.0 / 12, 1.0 / 6},
                             {1.0 / 24, -1.0 / 12, 1.0 / 6},
                             {0, 0, 1}};

// B^T d for six rows d[0..5] of n channels (vectorised over channels): out[k] = (B^T d)[k].
template <typename T>
inline void input_rows(const T* const d[6], T* const out[6], int64_t n) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) {
    const T d0 = d[0][c], d1 = d[1][c], d2 = d[2][c], d3 = d[3][c], d4 = d[4][c], d5 = d[5][c];
    out[0][c] = 4 * d0 - 5 * d2 + d4;
    out[1][c] = -4 * (d1 + d2) + d3 + d4;
    out[2][c] = 4 * (d1 - d2) - d3 + d4;
    out[3][c] = 2 * (d3 - d1) - d2 + d4;
    out[4][c] = 2 * (d1 - d3) - d2 + d4;
    out[5][c] = 4 * d1 - 5 * d3 + d5;
  }
}

// A^T m for six rows m[0..5]: out[k] = (A^T m)[k], k < 4.
template <typename T>
inline void output_rows(const T* const m[6], T* const out[4], int64_t n) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) {
    const T m0 = m[0][c], m1 = m[1][c], m2 = m[2][c], m3 = m[3][c], m4 = m[4][c], m5 = m[5][c];
    const T s12 = m1 + m2, d12 = m1 - m2, s34 = m3 + m4, d34 = m3 - m4;
    out[0][c] = m0 + s12 + s34;
    out[1][c] = d12 + 2 * d34;
    out[2][c] = s12 + 4 * s34;
    out[3][c] = d12 + 8 * d34 + m5;
  }
}

// A g for four rows g[0..3] (the adjoint of output_rows): out[k] = (A g)[k], k < 6.
template <typename T>
inline void grad_rows(const T* const g[4], T* const out[6], int64_t n) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) {
    const T g0 = g[0][c], g1 = g[1][c], g2 = g[2][c], g3 = g[3][c];
    out[0][c] = g0;
    out[1][c] = g0 + g1 + g2 + g3;
    out[2][c] = g0 - g1 + g2 - g3;
    out[3][c] = g0 + 2 * g1 + 4 * g2 + 8 * g3;
    out[4][c] = g0 - 2 * g1 + 4 * g2 - 8 * g3;
    out[5][c] = g3;
  }
}

// Output tile t of an [N, H, W] image grid cut into 4x4 tiles (the last ones clipped).
struct TileGrid {
  int64_t n, h, w, th, tw;
  TileGrid(int64_t n_, int64_t h_, int64_t w_)
      : n(n_), h(h_), w(w_), th((h_ + kTile - 1) / kTile), tw((w_ + kTile - 1) / kTile) {}
  int64_t tiles() const { return n * th * tw; }
  // image, first output row and column of tile t
  void origin(int64_t t, int64_t* b, int64_t* y0, int64_t* x0) const {
    *b = t / (th * tw);
    *y0 = (t / tw % th) * kTile;
    *x0 = t % tw * kTile;
  }
};

// V[p, t - t0, :] = (B^T x_tile B)[p] for tiles [t0, t1) of x (channels-last [N, H, W, C]).
template <typename T>
void transform_input(const T* x, const TileGrid& grid, int64_t channels, int64_t t0, int64_t t1,
                     T* v) {
  const int64_t rows = t1 - t0, C = channels;
  at::parallel_for(t0, t1, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> zero(C, T(0)), tmp(kPoints * C);
    for (int64_t t = begin; t < end; ++t) {
      int64_t b, y0, x0;
      grid.origin(t, &b, &y0, &x0);
      // along the tile's rows first: tmp[k][j] = sum_i B^T[k][i] x[i][j]
      for (int j = 0; j < kIn; ++j) {
        const T* d[6];
        T* out[6];
        const int64_t xx = x0 + j - 1;
        for (int i = 0; i < kIn; ++i) {
          const int64_t yy = y0 + i - 1;
          const bool inside = yy >= 0 && yy < grid.h && xx >= 0 && xx < grid.w;
          d[i] = inside ? x + ((b * grid.h + yy) * grid.w + xx) * C : zero.data();
          out[i] = tmp.data() + (i * kIn + j) * C;
        }
        input_rows(d, out, C);
      }
      // then along columns, into V's rows of this tile
      for (int k = 0; k < kIn; ++k) {
        const T* d[6];
        T* out[6];
        for (int j = 0; j < kIn; ++j) {
          d[j] = tmp.data() + (k * kIn + j) * C;
          out[j] = v + ((k * kIn + j) * rows + (t - t0)) * C;
        }
        input_rows(d, out, C);
      }
    }
  });
}

// y[tile] = A^T M[:, t - t0, :] A (+ bias) for tiles [t0, t1) (channels-last [N, H, W, O]).
template <typename T>
void transform_output(const T* m, const TileGrid& grid, int64_t channels, const T* bias,
                      int64_t t0, int64_t t1, T* y) {
  const int64_t rows = t1 - t0, O = channels;
  at::parallel_for(t0, t1, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> tmp(kTile * kIn * O), row(kTile * O);
    for (int64_t t = begin; t < end; ++t) {
      int64_t b, y0, x0;
      grid.origin(t, &b, &y0, &x0);
      for (int j = 0; j < kIn; ++j) {  // tmp[k][j] = sum_i A^T[k][i] M[i][j]
        const T* src[6];
        T* out[4];
        for (int i = 0; i < kIn; ++i) src[i] = m + ((i * kIn + j) * rows + (t - t0)) * O;
        for (int k = 0; k < kTile; ++k) out[k] = tmp.data() + (k * kIn + j) * O;
        output_rows(src, out, O);
      }
      for (int k = 0; k < kTile; ++k) {
        const int64_t yy = y0 + k;
        if (yy >= grid.h) break;
        const T* src[6];
        T* out[4];
        for (int j = 0; j < kIn; ++j) src[j] = tmp.data() + (k * kIn + j) * O;
        for (int l = 0; l < kTile; ++l) out[l] = row.data() + l * O;
        output_rows(src, out, O);
        for (int l = 0; l < kTile && x0 + l < grid.w; ++l) {
          T* dst = y + ((b * grid.h + yy) * grid.w + x0 + l) * O;
          const T* r = row.data() + l * O;
          if (bias != nullptr) {
#pragma omp simd
            for (int64_t o = 0; o < O; ++o) dst[o] = r[o] + bias[o];
          } else {
            std::memcpy(dst, r, O * sizeof(T));
          }
        }
      }
    }
  });
}

// D[p, t - t0, :] = (A g_tile A^T)[p] for tiles [t0, t1) of g (channels-last [N, H, W, O]).
template <typename T>
void transform_grad(const T* g, const TileGrid& grid, int64_t channels, int64_t t0, int64_t t1,
                    T* d) {
  const int64_t rows = t1 - t0, O = channels;
  at::parallel_for(t0, t1, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> zero(O, T(0)), tmp(kIn * kTile * O);
    for (int64_t t = begin; t < end; ++t) {
      int64_t b, y0, x0;
      grid.origin(t, &b, &y0, &x0);
      for (int j = 0; j < kTile; ++j) {  // tmp[k][j] = sum_i A[k][i] g[i][j]
        const T* src[4];
        T* out[6];
        const int64_t xx = x0 + j;
        for (int i = 0; i < kTile; ++i) {
          const int64_t yy = y0 + i;
          src[i] = yy < grid.h && xx < grid.w ? g + ((b * grid.h + yy) * grid.w + xx) * O : zero.data();
        }
        for (int k = 0; k < kIn; ++k) out[k] = tmp.data() + (k * kTile + j) * O;
        grad_rows(src, out, O);
      }
      for (int k = 0; k < kIn; ++k) {
        const T* src[4];
        T* out[6];
        for (int j = 0; j < kTile; ++j) src[j] = tmp.data() + (k * kTile + j) * O;
        for (int l = 0; l < kIn; ++l) out[l] = d + ((k * kIn + l) * rows + (t - t0)) * O;
        grad_rows(src, out, O);
      }
    }
  });
}

// Calls fn(t0, t1, a, b) for consecutive chunks [t0, t1) of `tiles` tiles, with dense buffers
// a [36, t1 - t0, ca] and b [36, t1 - t0, cb] (like `like`) for the chunk's transformed tiles.
// A chunk's buffers hold about kChunkBytes, but at least kMinChunkTiles tiles: the rows of the
// chunk's matrix products, which re-read the [36, C, O] filter each chunk.
template <typename F>
void for_each_chunk(int64_t tiles, int64_t ca, int64_t cb, const at::Tensor& like, F&& fn) {
  if (tiles == 0 || ca + cb == 0) return;
  const int64_t fit = kChunkBytes / (kPoints * (ca + cb) * like.element_size());
  const int64_t step = std::clamp<int64_t>(std::max(fit, kMinChunkTiles), 1, tiles);
  const auto buffers = [&](int64_t rows) {
    return std::make_pair(empty_cached({kPoints, rows, ca}, like.options()),
                          empty_cached({kPoints, rows, cb}, like.options()));
  };
  auto [a, b] = buffers(step);
  for (int64_t t0 = 0; t0 < tiles; t0 += step) {
    const int64_t t1 = std::min(tiles, t0 + step);
    if (t1 - t0 != step) std::tie(a, b) = buffers(t1 - t0);  // the shorter last chunk
    fn(t0, t1, a, b);
  }
}

// U[p, c, o] = (G w[o, c] G^T)[p] of weight [O, C, 3, 3] (contiguous): [36, C, O].
template <typename T>
void transform_filter(const T* w, int64_t C, int64_t O, T* u) {
  at::parallel_for(0, C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      for (int64_t o = 0; o < O; ++o) {
        const T* g = w + (o * C + c) * 9;
        T gw[6][3];  // G g
        for (int a = 0; a < 6; ++a)
          for (int j = 0; j < 3; ++j)
            gw[a][j] = T(kG[a][0]) * g[j] + T(kG[a][1]) * g[3 + j] + T(kG[a][2]) * g[6 + j];
        for (int a = 0; a < 6; ++a)
          for (int b = 0; b < 6; ++b)
            u[((a * kIn + b) * C + c) * O + o] =
                gw[a][0] * T(kG[b][0]) + gw[a][1] * T(kG[b][1]) + gw[a][2] * T(kG[b][2]);
      }
    }
  });
}

// dw[o, c] = G^T dU[:, c, o] G of dU [36, C, O]: the weight gradient [O, C, 3, 3].
template <typename T>
void untransform_filter_grad(const T* du, int64_t C, int64_t O, T* dw) {
  at::parallel_for(0, O, 1, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      for (int64_t c = 0; c < C; ++c) {
        T gd[3][6];  // G^T dU
        for (int i = 0; i < 3; ++i)
          for (int b = 0; b < 6; ++b) {
            T acc = 0;
            for (int a = 0; a < 6; ++a) acc += T(kG[a][i]) * du[((a * kIn + b) * C + c) * O + o];
            gd[i][b] = acc;
          }
        T* out = dw + (o * C + c) * 9;
        for (int i = 0; i < 3; ++i)
          for (int j = 0; j < 3; ++j) {
            T acc = 0;
            for (int b = 0; b < 6; ++b) acc += gd[i][b] * T(kG[b][j]);
            out[i * 3 + j] = acc;
          }
      }
    }
  });
}

void check_input(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.device().is_cpu() && t.dim() == 4, op, ": expected ", name, " a 4-d CPU tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op,
              ": expected ", name, " float32 or float64");
}

}  // namespace

Tensor conv3x3_same_cpu(const Tensor& x_in, const Tensor& weight, const OptTensor& bias) {
  check_input("conv3x3_same", "x", x_in);
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == x_in.size(1) && weight.size(2) == 3 &&
                  weight.size(3) == 3,
              "conv3x3_same: expected weight [O, C, 3, 3] of x's C");
  TORCH_CHECK(weight.scalar_type() == x_in.scalar_type() && weight.device().is_cpu(),
              "conv3x3_same: weight must be a CPU tensor of x's dtype");
  const Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), O = weight.size(0);
  Tensor y = empty_cached({N, O, H, W}, x.options(), at::MemoryFormat::ChannelsLast);
  if (y.numel() == 0) return y;
  const Tensor w = weight.contiguous();
  Tensor u = empty_cached({kPoints, C, O}, x.options());
  Tensor b;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == O && bias->device().is_cpu(),
                "conv3x3_same: expected a CPU bias [O]");
    b = bias->to(x.scalar_type()).contiguous();
  }
  const TileGrid grid(N, H, W);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv3x3_same", [&] {
    transform_filter(w.data_ptr<scalar_t>(), C, O, u.data_ptr<scalar_t>());
    const scalar_t* bias_data = b.defined() ? b.data_ptr<scalar_t>() : nullptr;
    for_each_chunk(grid.tiles(), C, O, x, [&](int64_t t0, int64_t t1, Tensor& v, Tensor& m) {
      transform_input(x.data_ptr<scalar_t>(), grid, C, t0, t1, v.data_ptr<scalar_t>());
      at::bmm_out(m, v, u);
      transform_output(m.data_ptr<scalar_t>(), grid, O, bias_data, t0, t1, y.data_ptr<scalar_t>());
    });
  });
  return y;
}

Tensor conv3x3_same_weight_grad_cpu(const Tensor& grad_y_in, const Tensor& x_in) {
  check_input("conv3x3_same_weight_grad", "x", x_in);
  check_input("conv3x3_same_weight_grad", "grad_y", grad_y_in);
  TORCH_CHECK(grad_y_in.size(0) == x_in.size(0) && grad_y_in.size(2) == x_in.size(2) &&
                  grad_y_in.size(3) == x_in.size(3) && grad_y_in.scalar_type() == x_in.scalar_type(),
              "conv3x3_same_weight_grad: grad_y must be [N, O, H, W] of x's N, H, W and dtype");
  const Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast);
  const Tensor gy = grad_y_in.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), O = gy.size(1);
  Tensor du = empty_cached({kPoints, C, O}, x.options()).zero_();
  Tensor dw = at::empty({O, C, 3, 3}, x.options());
  const TileGrid grid(N, H, W);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv3x3_same_weight_grad", [&] {
    for_each_chunk(grid.tiles(), C, O, x, [&](int64_t t0, int64_t t1, Tensor& v, Tensor& d) {
      transform_input(x.data_ptr<scalar_t>(), grid, C, t0, t1, v.data_ptr<scalar_t>());
      transform_grad(gy.data_ptr<scalar_t>(), grid, O, t0, t1, d.data_ptr<scalar_t>());
      du.baddbmm_(v.transpose(1, 2), d);  // [36, C, O] += V^T D
    });
    untransform_filter_grad(du.data_ptr<scalar_t>(), C, O, dw.data_ptr<scalar_t>());
  });
  return dw;
}

}  // namespace mmattn
