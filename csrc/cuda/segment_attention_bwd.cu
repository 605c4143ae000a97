// CUDA segment attention, backward. Recomputes P = exp(scale q k^T - lse) from the saved
// log-sum-exp; with delta = rowsum(dO * O) and dS = P * (dO V^T - delta):
//   dQ = scale dS K,   dK = scale dS^T Q,   dV = P^T dO.
// No atomics, so two runs give identical bits: dQ comes from a query-tile kernel and dK/dV
// from a key-tile kernel (each key tile loops over the query tiles of the segments whose
// windows hold it, in a fixed order), at the price of computing S and dP twice.
//
// In the key-tile kernel each warp owns 16 key rows and computes S^T = K Q^T and
// dP^T = V dO^T directly, so P^T and dS^T are already in the A-fragment layout of
// dV += P^T dO and dK += dS^T Q: the forward's register-only data flow, transposed.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "checks.h"
#include "ops.h"
#include "segment_attention.cuh"

namespace mmattn {
namespace cuda {
namespace {

struct BwdParams {
  RowsArg q, k, v, dout, dq, dk, dv;
  const float* lse;    // [B, H, n_q]
  const float* delta;  // [B, H, n_q]
  Geometry g;
  float scale, scale_log2;
};

// ---- delta = rowsum(dO * O): one warp per row ------------------------------------------------

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(256) delta_kernel(const RowsArg dout, const RowsArg out,
                                                    acc_t* delta, int n, int heads, int d) {
  const int lane = threadIdx.x % 32;
  const int r = blockIdx.x * 8 + threadIdx.x / 32;
  if (r >= n) return;
  const int b = blockIdx.y / heads, h = blockIdx.y % heads;
  const scalar_t* dr = rows_of<scalar_t>(dout, b, h) + int64_t{r} * dout.sn;
  const scalar_t* orow = rows_of<scalar_t>(out, b, h) + int64_t{r} * out.sn;
  acc_t acc = 0;
  for (int i = lane; i < d; i += 32) acc += static_cast<acc_t>(dr[i]) * static_cast<acc_t>(orow[i]);
  acc = warp_sum(acc);
  if (lane == 0) delta[int64_t{blockIdx.y} * n + r] = acc;
}

// ---- tensor-core dQ: a CTA of 4 warps owns 64 query rows ---------------------------------------

template <int D>
struct DqTile {
  static constexpr int kThreads = 128, kRows = 64, kKeys = D == 128 ? 32 : 64;
  static constexpr int kPitch = Pitch<D>::value;
  static constexpr int kSmemElems = 2 * kRows * kPitch + 4 * kKeys * kPitch;  // Q, dO, K[2], V[2]
};

template <typename T, int D>
__global__ void __launch_bounds__(128) dq_tc_kernel(const BwdParams p) {
  using Tile = DqTile<D>;
  using M = Mma16<T>;
  constexpr int kRows = Tile::kRows, kKeys = Tile::kKeys, kPitch = Tile::kPitch;
  constexpr int kThreads = Tile::kThreads;
  constexpr int kNb = kKeys / 8, kDb = D / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sdO = sQ + kRows * kPitch;
  T* sK = sdO + kRows * kPitch;  // [2][kKeys][kPitch]
  T* sV = sK + 2 * kKeys * kPitch;

  const Geometry& g = p.g;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int b = blockIdx.y / g.heads, h = blockIdx.y % g.heads;
  const int m0 = blockIdx.x * kRows;
  const int m_valid = min(kRows, g.n_q - m0);
  const T* q = rows_of<T>(p.q, b, h);
  const T* dout = rows_of<T>(p.dout, b, h);
  const T* k = rows_of<T>(p.k, b, h);
  const T* v = rows_of<T>(p.v, b, h);

  const KeyRanges keys = query_tile_keys(g, m0, m0 + m_valid);
  const int n_tiles = static_cast<int>(range_tiles(keys, kKeys));
  const int row_a = warp * 16 + lane / 4, row_b = row_a + 8;
  const Window32 win_a = Window32::of(query_row_window(g, min(m0 + row_a, g.n_q - 1)));
  const Window32 win_b = Window32::of(query_row_window(g, min(m0 + row_b, g.n_q - 1)));
  // base-2 log-sum-exp and delta of the two rows (zero past n_q: those rows are masked)
  const int64_t stat0 = (int64_t{b} * g.heads + h) * g.n_q + m0;
  const float lse_a = row_a < m_valid ? p.lse[stat0 + row_a] * kLog2e : 0.f;
  const float lse_b = row_b < m_valid ? p.lse[stat0 + row_b] * kLog2e : 0.f;
  const float dl_a = row_a < m_valid ? p.delta[stat0 + row_a] : 0.f;
  const float dl_b = row_b < m_valid ? p.delta[stat0 + row_b] : 0.f;

  auto load_kv = [&](int it, int stage) {
    int64_t t0, len;
    range_tile(keys, kKeys, it, &t0, &len);
    load_tile_async<T, D, kKeys, kThreads>(sK + stage * kKeys * kPitch, k + t0 * p.k.sn,
                                           p.k.sn, static_cast<int>(len));
    load_tile_async<T, D, kKeys, kThreads>(sV + stage * kKeys * kPitch, v + t0 * p.v.sn,
                                           p.v.sn, static_cast<int>(len));
  };
  load_tile_async<T, D, kRows, kThreads>(sQ, q + int64_t{m0} * p.q.sn, p.q.sn, m_valid);
  load_tile_async<T, D, kRows, kThreads>(sdO, dout + int64_t{m0} * p.dout.sn, p.dout.sn, m_valid);
  cp_async_commit();
  load_kv(0, 0);
  cp_async_commit();

  uint32_t qf[D / 16][4], dof[D / 16][4];
  float dq[kDb][4];
#pragma unroll
  for (int i = 0; i < kDb; ++i) dq[i][0] = dq[i][1] = dq[i][2] = dq[i][3] = 0.f;

  for (int it = 0; it < n_tiles; ++it) {
    const int stage = it & 1;
    if (it + 1 < n_tiles) {
      load_kv(it + 1, stage ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (it == 0) {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        ldsm_x4(qf[kk], ldsm_addr_a(sQ, kPitch, warp * 16, kk * 16, lane));
        ldsm_x4(dof[kk], ldsm_addr_a(sdO, kPitch, warp * 16, kk * 16, lane));
      }
    }
    const T* sKs = sK + stage * kKeys * kPitch;
    const T* sVs = sV + stage * kKeys * kPitch;
    int64_t t0_64, len_64;
    range_tile(keys, kKeys, it, &t0_64, &len_64);
    const int t0 = static_cast<int>(t0_64), n_valid = static_cast<int>(len_64);

    // S = Q K^T and dP = dO V^T
    float s[kNb][4], dp[kNb][4];
#pragma unroll
    for (int i = 0; i < kNb; ++i) {
      s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
      dp[i][0] = dp[i][1] = dp[i][2] = dp[i][3] = 0.f;
    }
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
      for (int nb = 0; nb < kNb; nb += 2) {
        uint32_t bf[4];
        ldsm_x4(bf, ldsm_addr_b_nk(sKs, kPitch, nb * 8, kk * 16, lane));
        M::mma(s[nb], qf[kk], bf[0], bf[1]);
        M::mma(s[nb + 1], qf[kk], bf[2], bf[3]);
        ldsm_x4(bf, ldsm_addr_b_nk(sVs, kPitch, nb * 8, kk * 16, lane));
        M::mma(dp[nb], dof[kk], bf[0], bf[1]);
        M::mma(dp[nb + 1], dof[kk], bf[2], bf[3]);
      }
    }

    // P = exp2(S scale log2e - lse log2e) and dS = P (dP - delta), zero outside the window
    const bool full = __all_sync(kFullMask, n_valid == kKeys && win_a.covers(t0, t0 + kKeys) &&
                                                win_b.covers(t0, t0 + kKeys));
#pragma unroll
    for (int nb = 0; nb < kNb; ++nb) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int col = nb * 8 + (lane % 4) * 2 + e;
        const bool in_tile = col < n_valid;
        const bool ok_a = full || (in_tile && win_a.contains(t0 + col));
        const bool ok_b = full || (in_tile && win_b.contains(t0 + col));
        const float pa = ok_a ? exp2f(s[nb][e] * p.scale_log2 - lse_a) : 0.f;
        const float pb = ok_b ? exp2f(s[nb][2 + e] * p.scale_log2 - lse_b) : 0.f;
        s[nb][e] = ok_a ? pa * (dp[nb][e] - dl_a) : 0.f;  // s now holds dS
        s[nb][2 + e] = ok_b ? pb * (dp[nb][2 + e] - dl_b) : 0.f;
      }
    }

    // dQ += dS K (K as the [keys][D] B operand, transposed by ldmatrix)
#pragma unroll
    for (int j = 0; j < kKeys / 16; ++j) {
      const uint32_t a[4] = {M::pack(s[2 * j][0], s[2 * j][1]), M::pack(s[2 * j][2], s[2 * j][3]),
                             M::pack(s[2 * j + 1][0], s[2 * j + 1][1]),
                             M::pack(s[2 * j + 1][2], s[2 * j + 1][3])};
#pragma unroll
      for (int db = 0; db < kDb; db += 2) {
        uint32_t bf[4];
        ldsm_x4_trans(bf, ldsm_addr_a(sKs, kPitch, j * 16, db * 8, lane));
        M::mma(dq[db], a, bf[0], bf[1]);
        M::mma(dq[db + 1], a, bf[2], bf[3]);
      }
    }
    __syncthreads();
  }

  T* out = mutable_rows_of<T>(p.dq, b, h);
  const int col0 = (lane % 4) * 2;
  if (row_a < m_valid) {
    uint32_t* dst = reinterpret_cast<uint32_t*>(out + int64_t{m0 + row_a} * p.dq.sn + col0);
#pragma unroll
    for (int db = 0; db < kDb; ++db) dst[db * 4] = M::pack(dq[db][0] * p.scale, dq[db][1] * p.scale);
  }
  if (row_b < m_valid) {
    uint32_t* dst = reinterpret_cast<uint32_t*>(out + int64_t{m0 + row_b} * p.dq.sn + col0);
#pragma unroll
    for (int db = 0; db < kDb; ++db) dst[db * 4] = M::pack(dq[db][2] * p.scale, dq[db][3] * p.scale);
  }
}

// ---- tensor-core dK, dV: a CTA of 4 warps owns 64 key rows -------------------------------------

template <int D>
struct DkvTile {
  static constexpr int kThreads = 128, kKeys = 64, kQueries = D == 128 ? 32 : 64;
  static constexpr int kPitch = Pitch<D>::value;
  // K, V, then Q[2], dO[2] (16-bit), then lse[2], delta[2] (float)
  static constexpr int kSmemElems = 2 * kKeys * kPitch + 4 * kQueries * kPitch;
  static constexpr int kStatFloats = 4 * kQueries;
};

template <typename T, int D>
__global__ void __launch_bounds__(128) dkv_tc_kernel(const BwdParams p) {
  using Tile = DkvTile<D>;
  using M = Mma16<T>;
  constexpr int kKeys = Tile::kKeys, kQueries = Tile::kQueries, kPitch = Tile::kPitch;
  constexpr int kThreads = Tile::kThreads;
  constexpr int kNb = kQueries / 8, kDb = D / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);
  T* sV = sK + kKeys * kPitch;
  T* sQ = sV + kKeys * kPitch;            // [2][kQueries][kPitch]
  T* sdO = sQ + 2 * kQueries * kPitch;    // [2][kQueries][kPitch]
  float* sLse = reinterpret_cast<float*>(sdO + 2 * kQueries * kPitch);  // [2][kQueries], base 2
  float* sDelta = sLse + 2 * kQueries;                                  // [2][kQueries]

  const Geometry& g = p.g;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int b = blockIdx.y / g.heads, h = blockIdx.y % g.heads;
  const int n0 = blockIdx.x * kKeys;
  const int n_valid = min(kKeys, g.n_k - n0);
  const T* q = rows_of<T>(p.q, b, h);
  const T* dout = rows_of<T>(p.dout, b, h);
  const T* k = rows_of<T>(p.k, b, h);
  const T* v = rows_of<T>(p.v, b, h);
  const int64_t stat0 = (int64_t{b} * g.heads + h) * g.n_q;

  // The queries that see this key tile, and the queries that see each of this thread's rows.
  const KeyRanges queries = key_tile_queries(g, n0, n0 + n_valid);
  const int n_tiles = static_cast<int>(range_tiles(queries, kQueries));
  const int row_a = warp * 16 + lane / 4, row_b = row_a + 8;
  const Window32 win_a = Window32::of(key_row_window(g, min(n0 + row_a, g.n_k - 1)));
  const Window32 win_b = Window32::of(key_row_window(g, min(n0 + row_b, g.n_k - 1)));

  auto load_q = [&](int it, int stage) {
    int64_t r0, len;
    range_tile(queries, kQueries, it, &r0, &len);
    const int rows = static_cast<int>(len);
    load_tile_async<T, D, kQueries, kThreads>(sQ + stage * kQueries * kPitch, q + r0 * p.q.sn,
                                              p.q.sn, rows);
    load_tile_async<T, D, kQueries, kThreads>(sdO + stage * kQueries * kPitch,
                                              dout + r0 * p.dout.sn, p.dout.sn, rows);
    for (int i = threadIdx.x; i < kQueries; i += kThreads) {
      sLse[stage * kQueries + i] = i < rows ? p.lse[stat0 + r0 + i] * kLog2e : 0.f;
      sDelta[stage * kQueries + i] = i < rows ? p.delta[stat0 + r0 + i] : 0.f;
    }
  };
  load_tile_async<T, D, kKeys, kThreads>(sK, k + int64_t{n0} * p.k.sn, p.k.sn, n_valid);
  load_tile_async<T, D, kKeys, kThreads>(sV, v + int64_t{n0} * p.v.sn, p.v.sn, n_valid);
  cp_async_commit();
  load_q(0, 0);
  cp_async_commit();

  float dk[kDb][4], dv[kDb][4];
#pragma unroll
  for (int i = 0; i < kDb; ++i) {
    dk[i][0] = dk[i][1] = dk[i][2] = dk[i][3] = 0.f;
    dv[i][0] = dv[i][1] = dv[i][2] = dv[i][3] = 0.f;
  }

  for (int it = 0; it < n_tiles; ++it) {
    const int stage = it & 1;
    if (it + 1 < n_tiles) {
      load_q(it + 1, stage ^ 1);  // plain stores to sLse/sDelta are covered by the barrier
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const T* sQs = sQ + stage * kQueries * kPitch;
    const T* sdOs = sdO + stage * kQueries * kPitch;
    const float* lse = sLse + stage * kQueries;
    const float* delta = sDelta + stage * kQueries;
    int64_t r0_64, len_64;
    range_tile(queries, kQueries, it, &r0_64, &len_64);
    const int r0 = static_cast<int>(r0_64), q_valid = static_cast<int>(len_64);

    // S^T = K Q^T and dP^T = V dO^T (16 keys x kQueries queries per warp)
    float st[kNb][4], dpt[kNb][4];
#pragma unroll
    for (int i = 0; i < kNb; ++i) {
      st[i][0] = st[i][1] = st[i][2] = st[i][3] = 0.f;
      dpt[i][0] = dpt[i][1] = dpt[i][2] = dpt[i][3] = 0.f;
    }
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t ka[4], va[4];
      ldsm_x4(ka, ldsm_addr_a(sK, kPitch, warp * 16, kk * 16, lane));
      ldsm_x4(va, ldsm_addr_a(sV, kPitch, warp * 16, kk * 16, lane));
#pragma unroll
      for (int nb = 0; nb < kNb; nb += 2) {
        uint32_t bf[4];
        ldsm_x4(bf, ldsm_addr_b_nk(sQs, kPitch, nb * 8, kk * 16, lane));
        M::mma(st[nb], ka, bf[0], bf[1]);
        M::mma(st[nb + 1], ka, bf[2], bf[3]);
        ldsm_x4(bf, ldsm_addr_b_nk(sdOs, kPitch, nb * 8, kk * 16, lane));
        M::mma(dpt[nb], va, bf[0], bf[1]);
        M::mma(dpt[nb + 1], va, bf[2], bf[3]);
      }
    }

    // P^T and dS^T, zero where the query does not see the key
    const bool full = __all_sync(kFullMask, q_valid == kQueries &&
                                                win_a.covers(r0, r0 + kQueries) &&
                                                win_b.covers(r0, r0 + kQueries));
#pragma unroll
    for (int nb = 0; nb < kNb; ++nb) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int col = nb * 8 + (lane % 4) * 2 + e;
        const bool in_tile = col < q_valid;
        const bool ok_a = full || (in_tile && win_a.contains(r0 + col));
        const bool ok_b = full || (in_tile && win_b.contains(r0 + col));
        const float pa = ok_a ? exp2f(st[nb][e] * p.scale_log2 - lse[col]) : 0.f;
        const float pb = ok_b ? exp2f(st[nb][2 + e] * p.scale_log2 - lse[col]) : 0.f;
        st[nb][e] = pa;
        st[nb][2 + e] = pb;
        dpt[nb][e] = ok_a ? pa * (dpt[nb][e] - delta[col]) : 0.f;
        dpt[nb][2 + e] = ok_b ? pb * (dpt[nb][2 + e] - delta[col]) : 0.f;
      }
    }

    // dV += P^T dO and dK += dS^T Q (dO and Q as [queries][D] B operands)
#pragma unroll
    for (int j = 0; j < kQueries / 16; ++j) {
      const uint32_t pa[4] = {M::pack(st[2 * j][0], st[2 * j][1]), M::pack(st[2 * j][2], st[2 * j][3]),
                              M::pack(st[2 * j + 1][0], st[2 * j + 1][1]),
                              M::pack(st[2 * j + 1][2], st[2 * j + 1][3])};
      const uint32_t da[4] = {M::pack(dpt[2 * j][0], dpt[2 * j][1]),
                              M::pack(dpt[2 * j][2], dpt[2 * j][3]),
                              M::pack(dpt[2 * j + 1][0], dpt[2 * j + 1][1]),
                              M::pack(dpt[2 * j + 1][2], dpt[2 * j + 1][3])};
#pragma unroll
      for (int db = 0; db < kDb; db += 2) {
        uint32_t bf[4];
        ldsm_x4_trans(bf, ldsm_addr_a(sdOs, kPitch, j * 16, db * 8, lane));
        M::mma(dv[db], pa, bf[0], bf[1]);
        M::mma(dv[db + 1], pa, bf[2], bf[3]);
        ldsm_x4_trans(bf, ldsm_addr_a(sQs, kPitch, j * 16, db * 8, lane));
        M::mma(dk[db], da, bf[0], bf[1]);
        M::mma(dk[db + 1], da, bf[2], bf[3]);
      }
    }
    __syncthreads();
  }

  T* dk_out = mutable_rows_of<T>(p.dk, b, h);
  T* dv_out = mutable_rows_of<T>(p.dv, b, h);
  const int col0 = (lane % 4) * 2;
  if (row_a < n_valid) {
    uint32_t* dkr = reinterpret_cast<uint32_t*>(dk_out + int64_t{n0 + row_a} * p.dk.sn + col0);
    uint32_t* dvr = reinterpret_cast<uint32_t*>(dv_out + int64_t{n0 + row_a} * p.dv.sn + col0);
#pragma unroll
    for (int db = 0; db < kDb; ++db) {
      dkr[db * 4] = M::pack(dk[db][0] * p.scale, dk[db][1] * p.scale);
      dvr[db * 4] = M::pack(dv[db][0], dv[db][1]);
    }
  }
  if (row_b < n_valid) {
    uint32_t* dkr = reinterpret_cast<uint32_t*>(dk_out + int64_t{n0 + row_b} * p.dk.sn + col0);
    uint32_t* dvr = reinterpret_cast<uint32_t*>(dv_out + int64_t{n0 + row_b} * p.dv.sn + col0);
#pragma unroll
    for (int db = 0; db < kDb; ++db) {
      dkr[db * 4] = M::pack(dk[db][2] * p.scale, dk[db][3] * p.scale);
      dvr[db * 4] = M::pack(dv[db][2], dv[db][3]);
    }
  }
}

template <typename Kernel>
void launch_with_smem(Kernel kernel, dim3 grid, int threads, size_t smem, const BwdParams& p) {
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(smem)));
  kernel<<<grid, threads, smem, c10::cuda::getCurrentCUDAStream()>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int D>
void launch_bwd_tc(const BwdParams& p, int batch_heads) {
  using Q = DqTile<D>;
  using KV = DkvTile<D>;
  launch_with_smem(dq_tc_kernel<T, D>, dim3((p.g.n_q + Q::kRows - 1) / Q::kRows, batch_heads),
                   Q::kThreads, Q::kSmemElems * sizeof(T), p);
  launch_with_smem(dkv_tc_kernel<T, D>, dim3((p.g.n_k + KV::kKeys - 1) / KV::kKeys, batch_heads),
                   KV::kThreads, KV::kSmemElems * sizeof(T) + KV::kStatFloats * sizeof(float), p);
}

// ---- generic backward: one warp per query row (dQ) or per key row (dK, dV) ----------------------

template <typename acc_t>
struct GenericBwdParams {
  RowsArg q, k, v, dout, dq, dk, dv;
  const acc_t* lse;
  const acc_t* delta;
  Geometry g;
  int d;
  acc_t scale;
};

constexpr int kGenericWarps = 8;
constexpr int kPerLane = kMaxGenericHeadDim / 32;

// dQ[r] = scale sum_t dS[r, t] k[t] over the window of query row r.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(256) dq_generic_kernel(const GenericBwdParams<acc_t> p) {
  __shared__ acc_t sq[kGenericWarps][kMaxGenericHeadDim];
  __shared__ acc_t sdo[kGenericWarps][kMaxGenericHeadDim];
  const Geometry& g = p.g;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int r = blockIdx.x * kGenericWarps + warp;
  if (r >= g.n_q) return;
  const int b = blockIdx.y / g.heads, h = blockIdx.y % g.heads;
  const scalar_t* qr = rows_of<scalar_t>(p.q, b, h) + int64_t{r} * p.q.sn;
  const scalar_t* dor = rows_of<scalar_t>(p.dout, b, h) + int64_t{r} * p.dout.sn;
  const scalar_t* k = rows_of<scalar_t>(p.k, b, h);
  const scalar_t* v = rows_of<scalar_t>(p.v, b, h);
  for (int d = lane; d < p.d; d += 32) {
    sq[warp][d] = static_cast<acc_t>(qr[d]);
    sdo[warp][d] = static_cast<acc_t>(dor[d]);
  }
  __syncwarp();
  const int64_t stat = (int64_t{b} * g.heads + h) * g.n_q + r;
  const acc_t lse = p.lse[stat], delta = p.delta[stat];

  const KeyRanges win = query_row_window(g, r);
  acc_t acc[kPerLane];
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) acc[i] = 0;
  for (int c = 0; c < win.count; ++c) {
    // selects keep the ranges in registers (a run-time index would put them on the stack)
    const int begin = static_cast<int>(c == 0 ? win.begin[0] : win.begin[1]);
    const int end = begin + static_cast<int>(c == 0 ? win.len[0] : win.len[1]);
    for (int t0 = begin; t0 < end; t0 += 32) {
      const int t = t0 + lane;
      acc_t ds = 0;
      if (t < end) {
        const scalar_t* kr = k + int64_t{t} * p.k.sn;
        const scalar_t* vr = v + int64_t{t} * p.v.sn;
        acc_t s = 0, dp = 0;
        for (int d = 0; d < p.d; ++d) {
          s += sq[warp][d] * static_cast<acc_t>(kr[d]);
          dp += sdo[warp][d] * static_cast<acc_t>(vr[d]);
        }
        ds = exp_acc(s * p.scale - lse) * (dp - delta);
      }
      const int n = min(32, end - t0);
      for (int j = 0; j < n; ++j) {
        const acc_t dsj = __shfl_sync(kFullMask, ds, j);
        const scalar_t* kr = k + int64_t{t0 + j} * p.k.sn;
#pragma unroll
        for (int i = 0; i < kPerLane; ++i) {
          const int d = lane + 32 * i;
          if (d < p.d) acc[i] += dsj * static_cast<acc_t>(kr[d]);
        }
      }
    }
  }
  scalar_t* out = mutable_rows_of<scalar_t>(p.dq, b, h) + int64_t{r} * p.dq.sn;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int d = lane + 32 * i;
    if (d < p.d) out[d] = static_cast<scalar_t>(acc[i] * p.scale);
  }
}

// dV[t] = sum_r P[r, t] dO[r], dK[t] = scale sum_r dS[r, t] q[r] over the queries that see key t.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(256) dkv_generic_kernel(const GenericBwdParams<acc_t> p) {
  __shared__ acc_t sk[kGenericWarps][kMaxGenericHeadDim];
  __shared__ acc_t sv[kGenericWarps][kMaxGenericHeadDim];
  const Geometry& g = p.g;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int t = blockIdx.x * kGenericWarps + warp;
  if (t >= g.n_k) return;
  const int b = blockIdx.y / g.heads, h = blockIdx.y % g.heads;
  const scalar_t* kr = rows_of<scalar_t>(p.k, b, h) + int64_t{t} * p.k.sn;
  const scalar_t* vr = rows_of<scalar_t>(p.v, b, h) + int64_t{t} * p.v.sn;
  const scalar_t* q = rows_of<scalar_t>(p.q, b, h);
  const scalar_t* dout = rows_of<scalar_t>(p.dout, b, h);
  for (int d = lane; d < p.d; d += 32) {
    sk[warp][d] = static_cast<acc_t>(kr[d]);
    sv[warp][d] = static_cast<acc_t>(vr[d]);
  }
  __syncwarp();
  const int64_t stat0 = (int64_t{b} * g.heads + h) * g.n_q;

  const KeyRanges seen_by = key_row_window(g, t);
  acc_t dk[kPerLane], dv[kPerLane];
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) dk[i] = dv[i] = 0;
  for (int c = 0; c < seen_by.count; ++c) {
    // selects keep the ranges in registers (a run-time index would put them on the stack)
    const int begin = static_cast<int>(c == 0 ? seen_by.begin[0] : seen_by.begin[1]);
    const int end = begin + static_cast<int>(c == 0 ? seen_by.len[0] : seen_by.len[1]);
    for (int r0 = begin; r0 < end; r0 += 32) {
      const int r = r0 + lane;
      acc_t pr = 0, ds = 0;
      if (r < end) {
        const scalar_t* qr = q + int64_t{r} * p.q.sn;
        const scalar_t* dor = dout + int64_t{r} * p.dout.sn;
        acc_t s = 0, dp = 0;
        for (int d = 0; d < p.d; ++d) {
          s += sk[warp][d] * static_cast<acc_t>(qr[d]);
          dp += sv[warp][d] * static_cast<acc_t>(dor[d]);
        }
        pr = exp_acc(s * p.scale - p.lse[stat0 + r]);
        ds = pr * (dp - p.delta[stat0 + r]);
      }
      const int n = min(32, end - r0);
      for (int j = 0; j < n; ++j) {
        const acc_t pj = __shfl_sync(kFullMask, pr, j);
        const acc_t dsj = __shfl_sync(kFullMask, ds, j);
        const scalar_t* qr = q + int64_t{r0 + j} * p.q.sn;
        const scalar_t* dor = dout + int64_t{r0 + j} * p.dout.sn;
#pragma unroll
        for (int i = 0; i < kPerLane; ++i) {
          const int d = lane + 32 * i;
          if (d < p.d) {
            dv[i] += pj * static_cast<acc_t>(dor[d]);
            dk[i] += dsj * static_cast<acc_t>(qr[d]);
          }
        }
      }
    }
  }
  scalar_t* dkr = mutable_rows_of<scalar_t>(p.dk, b, h) + int64_t{t} * p.dk.sn;
  scalar_t* dvr = mutable_rows_of<scalar_t>(p.dv, b, h) + int64_t{t} * p.dv.sn;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int d = lane + 32 * i;
    if (d < p.d) {
      dkr[d] = static_cast<scalar_t>(dk[i] * p.scale);
      dvr[d] = static_cast<scalar_t>(dv[i]);
    }
  }
}

template <typename scalar_t, typename acc_t>
void launch_bwd_generic(const GenericBwdParams<acc_t>& p, int batch_heads) {
  const auto stream = c10::cuda::getCurrentCUDAStream();
  dq_generic_kernel<scalar_t, acc_t>
      <<<dim3((p.g.n_q + kGenericWarps - 1) / kGenericWarps, batch_heads), 32 * kGenericWarps, 0,
         stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  dkv_generic_kernel<scalar_t, acc_t>
      <<<dim3((p.g.n_k + kGenericWarps - 1) / kGenericWarps, batch_heads), 32 * kGenericWarps, 0,
         stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace
}  // namespace cuda

std::tuple<at::Tensor, at::Tensor, at::Tensor> segment_attention_bwd_cuda(
    const at::Tensor& dout_in, const at::Tensor& q_in, const at::Tensor& k_in,
    const at::Tensor& v_in, const at::Tensor& out_in, const at::Tensor& lse_in, int64_t segments,
    int64_t window, int64_t shift, double scale) {
  using namespace cuda;
  const Geometry g =
      check_segment_attention("segment_attention_bwd", q_in, k_in, v_in, segments, window, shift);
  ::mmattn::check_segment_attention_grads("segment_attention_bwd", dout_in, q_in, out_in, lse_in);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const bool tc = tensor_core_path(q_in);
  const at::Tensor q = rows_ready(q_in, tc), k = rows_ready(k_in, tc), v = rows_ready(v_in, tc);
  const at::Tensor dout = rows_ready(dout_in, tc), out = rows_ready(out_in, tc);
  const at::Tensor lse = lse_in.contiguous();
  Output dq(q_in, tc), dk(k_in, tc), dv(v_in, tc);
  const int batch_heads = static_cast<int>(q.size(0) * q.size(1));
  if (batch_heads == 0) return {dq.finish(), dk.finish(), dv.finish()};
  const int64_t d = q.size(3);
  at::Tensor delta = at::empty_like(lse);
  const auto stream = c10::cuda::getCurrentCUDAStream();

  dispatch_floating(q.scalar_type(), "segment_attention_bwd", [&](auto zero) {
    using scalar_t = decltype(zero);
    using acc_t = acc_type<scalar_t>;
    delta_kernel<scalar_t, acc_t><<<dim3((g.n_q + 7) / 8, batch_heads), 256, 0, stream>>>(
        rows_arg(dout), rows_arg(out), delta.data_ptr<acc_t>(), g.n_q, g.heads,
        static_cast<int>(d));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if constexpr (std::is_same_v<scalar_t, c10::BFloat16> || std::is_same_v<scalar_t, c10::Half>) {
      if (tc) {
        const BwdParams p{rows_arg(q), rows_arg(k), rows_arg(v), rows_arg(dout),
                          rows_arg(dq.work), rows_arg(dk.work), rows_arg(dv.work),
                          lse.data_ptr<float>(), delta.data_ptr<float>(), g,
                          static_cast<float>(scale), static_cast<float>(scale * 1.4426950408889634)};
        if (d == 32) launch_bwd_tc<scalar_t, 32>(p, batch_heads);
        else if (d == 64) launch_bwd_tc<scalar_t, 64>(p, batch_heads);
        else launch_bwd_tc<scalar_t, 128>(p, batch_heads);
        return;
      }
    }
    const GenericBwdParams<acc_t> p{rows_arg(q), rows_arg(k), rows_arg(v), rows_arg(dout),
                                    rows_arg(dq.work), rows_arg(dk.work), rows_arg(dv.work),
                                    lse.data_ptr<acc_t>(), delta.data_ptr<acc_t>(), g,
                                    static_cast<int>(d), static_cast<acc_t>(scale)};
    launch_bwd_generic<scalar_t, acc_t>(p, batch_heads);
  });
  return {dq.finish(), dk.finish(), dv.finish()};
}

}  // namespace mmattn
