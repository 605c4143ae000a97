// CUDA segment attention, forward: out = softmax(scale q k^T over each row's window) v, and
// the log-sum-exp of each row for the backward pass.
//
// Tensor-core kernel (FlashAttention-2 style): a CTA of 4 warps owns 64 query rows; Q stays in
// registers as mma fragments, K/V tiles of 64 keys stream through shared memory (cp.async,
// double-buffered), scores and the online softmax live in registers, and P is fed back to the
// tensor cores as the A operand of P V without touching shared memory.
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

// ---- host helpers shared with the backward pass ------------------------------------------

Geometry check_segment_attention(const char* op, const at::Tensor& q, const at::Tensor& k,
                                 const at::Tensor& v, int64_t segments, int64_t window,
                                 int64_t shift) {
  TORCH_CHECK(q.is_cuda() && k.is_cuda() && v.is_cuda(), op, ": q, k, v must be CUDA tensors");
  ::mmattn::check_segment_attention(op, q, k, v, segments, window);
  TORCH_CHECK(q.size(2) < (int64_t{1} << 30) && k.size(2) < (int64_t{1} << 30), op,
              ": n_q and n_k must be < 2^30 on CUDA");
  TORCH_CHECK(q.size(0) * q.size(1) <= kCudaMaxBatchHeads, op, ": B * H must be <= ", kCudaMaxBatchHeads, " on CUDA, got ",
              q.size(0) * q.size(1));
  TORCH_CHECK_VALUE(q.size(3) >= 1 && q.size(3) <= kMaxGenericHeadDim, op, ": head_dim D=",
                    q.size(3), " is not supported on CUDA (need 1 <= D <= ", kMaxGenericHeadDim,
                    "; the tensor-core kernels take D = 32, 64, 128)");
  Geometry g;
  g.n_q = static_cast<int>(q.size(2));
  g.n_k = static_cast<int>(k.size(2));
  g.heads = static_cast<int>(q.size(1));
  g.segments = static_cast<int>(segments);
  g.window = static_cast<int>(window);
  g.shift = static_cast<int>(wrap_shift(shift, segments));
  g.tshift = static_cast<int>(transposed_shift(shift, window, segments));
  return g;
}

bool tensor_core_path(const at::Tensor& q) {
  const auto t = q.scalar_type();
  const int64_t d = q.size(3);
  return (t == at::kBFloat16 || t == at::kHalf) && (d == 32 || d == 64 || d == 128);
}

namespace {
bool rows_aligned(const at::Tensor& t) {
  if (reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 != 0) return false;
  for (int dim = 0; dim < 3; ++dim) {
    if (t.size(dim) > 1 && (t.stride(dim) * t.element_size()) % 16 != 0) return false;
  }
  return true;
}
}  // namespace

at::Tensor rows_ready(const at::Tensor& t, bool tensor_cores) {
  if (t.stride(3) == 1 && (!tensor_cores || rows_aligned(t))) return t;
  return t.clone(at::MemoryFormat::Contiguous);  // a fresh, aligned allocation
}

RowsArg rows_arg(const at::Tensor& t) {
  // strides of size-1 dims never multiply a non-zero index
  return {t.data_ptr(), t.size(0) > 1 ? t.stride(0) : 0, t.size(1) > 1 ? t.stride(1) : 0,
          t.size(2) > 1 ? t.stride(2) : 0};
}

Output::Output(const at::Tensor& like, bool tensor_cores) : result(empty_rows_like(like)) {
  const bool usable = result.stride(3) == 1 && (!tensor_cores || rows_aligned(result));
  work = usable ? result : at::empty_like(like, at::MemoryFormat::Contiguous);
}

at::Tensor Output::finish() {
  if (!work.is_same(result)) result.copy_(work);
  return result;
}

namespace {

// ---- tensor-core forward ----------------------------------------------------------------------

struct FwdParams {
  RowsArg q, k, v, o;
  float* lse;  // [B, H, n_q]
  Geometry g;
  float scale_log2;  // scale * log2(e): scores in base-2 units
};

template <int D>
struct FwdTile {
  static constexpr int kThreads = 128, kRows = 64, kKeys = 64;
  static constexpr int kPitch = Pitch<D>::value;
  static constexpr int kSmemElems = kRows * kPitch + 4 * kKeys * kPitch;  // Q, K[2], V[2]
};

template <typename T, int D>
__global__ void __launch_bounds__(128) fwd_tc_kernel(const FwdParams p) {
  using Tile = FwdTile<D>;
  using M = Mma16<T>;
  constexpr int kRows = Tile::kRows, kKeys = Tile::kKeys, kPitch = Tile::kPitch;
  constexpr int kThreads = Tile::kThreads;
  constexpr int kNb = kKeys / 8;  // n8 blocks of scores per warp
  constexpr int kDb = D / 8;      // n8 blocks of output per warp
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + kRows * kPitch;    // [2][kKeys][kPitch]
  T* sV = sK + 2 * kKeys * kPitch;

  const Geometry& g = p.g;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int b = blockIdx.y / g.heads, h = blockIdx.y % g.heads;
  const int m0 = blockIdx.x * kRows;
  const int m_valid = min(kRows, g.n_q - m0);
  const T* q = rows_of<T>(p.q, b, h);
  const T* k = rows_of<T>(p.k, b, h);
  const T* v = rows_of<T>(p.v, b, h);

  // The keys of this tile, and the windows of this thread's two rows (rows past n_q borrow
  // the last row's window; they are never stored).
  const KeyRanges keys = query_tile_keys(g, m0, m0 + m_valid);
  const int n_tiles = static_cast<int>(range_tiles(keys, kKeys));
  const int row_a = warp * 16 + lane / 4, row_b = row_a + 8;
  const Window32 win_a = Window32::of(query_row_window(g, min(m0 + row_a, g.n_q - 1)));
  const Window32 win_b = Window32::of(query_row_window(g, min(m0 + row_b, g.n_q - 1)));

  auto load_kv = [&](int it, int stage) {
    int64_t t0, len;
    range_tile(keys, kKeys, it, &t0, &len);
    load_tile_async<T, D, kKeys, kThreads>(sK + stage * kKeys * kPitch, k + t0 * p.k.sn,
                                           p.k.sn, static_cast<int>(len));
    load_tile_async<T, D, kKeys, kThreads>(sV + stage * kKeys * kPitch, v + t0 * p.v.sn,
                                           p.v.sn, static_cast<int>(len));
  };
  load_tile_async<T, D, kRows, kThreads>(sQ, q + int64_t{m0} * p.q.sn, p.q.sn, m_valid);
  cp_async_commit();
  load_kv(0, 0);
  cp_async_commit();

  uint32_t qf[D / 16][4];
  float o[kDb][4];
#pragma unroll
  for (int i = 0; i < kDb; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.f, l_b = 0.f;

  for (int it = 0; it < n_tiles; ++it) {
    const int stage = it & 1;
    if (it + 1 < n_tiles) {
      load_kv(it + 1, stage ^ 1);  // that stage was released by the barrier ending it - 1
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (it == 0) {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) ldsm_x4(qf[kk], ldsm_addr_a(sQ, kPitch, warp * 16, kk * 16, lane));
    }
    const T* sKs = sK + stage * kKeys * kPitch;
    const T* sVs = sV + stage * kKeys * kPitch;
    int64_t t0_64, len_64;
    range_tile(keys, kKeys, it, &t0_64, &len_64);
    const int t0 = static_cast<int>(t0_64), n_valid = static_cast<int>(len_64);

    // S = Q K^T (16 rows x 64 keys per warp)
    float s[kNb][4];
#pragma unroll
    for (int i = 0; i < kNb; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
      for (int nb = 0; nb < kNb; nb += 2) {
        uint32_t bf[4];
        ldsm_x4(bf, ldsm_addr_b_nk(sKs, kPitch, nb * 8, kk * 16, lane));
        M::mma(s[nb], qf[kk], bf[0], bf[1]);
        M::mma(s[nb + 1], qf[kk], bf[2], bf[3]);
      }
    }

    // Scale to base-2 units; mask keys past the tile and outside each row's window (skipped
    // when every row of the warp sees the whole tile).
    const bool full = __all_sync(kFullMask, n_valid == kKeys && win_a.covers(t0, t0 + kKeys) &&
                                                win_b.covers(t0, t0 + kKeys));
#pragma unroll
    for (int nb = 0; nb < kNb; ++nb) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int col = nb * 8 + (lane % 4) * 2 + e;
        float sa = s[nb][e] * p.scale_log2, sb = s[nb][2 + e] * p.scale_log2;
        if (!full) {
          const bool in_tile = col < n_valid;
          if (!(in_tile && win_a.contains(t0 + col))) sa = -INFINITY;
          if (!(in_tile && win_b.contains(t0 + col))) sb = -INFINITY;
        }
        s[nb][e] = sa;
        s[nb][2 + e] = sb;
      }
    }

    // Online softmax; a row's four lanes (one quad) hold its 64 scores.
    float mx_a = -INFINITY, mx_b = -INFINITY;
#pragma unroll
    for (int nb = 0; nb < kNb; ++nb) {
      mx_a = fmaxf(mx_a, fmaxf(s[nb][0], s[nb][1]));
      mx_b = fmaxf(mx_b, fmaxf(s[nb][2], s[nb][3]));
    }
#pragma unroll
    for (int o_ = 1; o_ < 4; o_ <<= 1) {
      mx_a = fmaxf(mx_a, __shfl_xor_sync(kFullMask, mx_a, o_));
      mx_b = fmaxf(mx_b, __shfl_xor_sync(kFullMask, mx_b, o_));
    }
    const float new_a = fmaxf(m_a, mx_a), new_b = fmaxf(m_b, mx_b);
    // a row that has seen no key yet keeps 0 as its reference (exp2(-inf - 0) = 0)
    const float ref_a = new_a == -INFINITY ? 0.f : new_a;
    const float ref_b = new_b == -INFINITY ? 0.f : new_b;
    const float alpha_a = exp2f(m_a - ref_a), alpha_b = exp2f(m_b - ref_b);
    m_a = new_a;
    m_b = new_b;
    float sum_a = 0.f, sum_b = 0.f;
#pragma unroll
    for (int nb = 0; nb < kNb; ++nb) {
      s[nb][0] = exp2f(s[nb][0] - ref_a);
      s[nb][1] = exp2f(s[nb][1] - ref_a);
      s[nb][2] = exp2f(s[nb][2] - ref_b);
      s[nb][3] = exp2f(s[nb][3] - ref_b);
      sum_a += s[nb][0] + s[nb][1];
      sum_b += s[nb][2] + s[nb][3];
    }
    l_a = l_a * alpha_a + sum_a;
    l_b = l_b * alpha_b + sum_b;
#pragma unroll
    for (int i = 0; i < kDb; ++i) {
      o[i][0] *= alpha_a;
      o[i][1] *= alpha_a;
      o[i][2] *= alpha_b;
      o[i][3] *= alpha_b;
    }

    // O += P V: the score fragments of key blocks (2j, 2j+1) form the A fragment of step j.
#pragma unroll
    for (int j = 0; j < kKeys / 16; ++j) {
      const uint32_t a[4] = {M::pack(s[2 * j][0], s[2 * j][1]), M::pack(s[2 * j][2], s[2 * j][3]),
                             M::pack(s[2 * j + 1][0], s[2 * j + 1][1]),
                             M::pack(s[2 * j + 1][2], s[2 * j + 1][3])};
#pragma unroll
      for (int db = 0; db < kDb; db += 2) {
        uint32_t bf[4];
        ldsm_x4_trans(bf, ldsm_addr_a(sVs, kPitch, j * 16, db * 8, lane));
        M::mma(o[db], a, bf[0], bf[1]);
        M::mma(o[db + 1], a, bf[2], bf[3]);
      }
    }
    __syncthreads();  // this stage may be refilled by the next iteration's load
  }

  // Normalise and store; the row sums are spread over the quad.
#pragma unroll
  for (int o_ = 1; o_ < 4; o_ <<= 1) {
    l_a += __shfl_xor_sync(kFullMask, l_a, o_);
    l_b += __shfl_xor_sync(kFullMask, l_b, o_);
  }
  const float inv_a = l_a > 0.f ? 1.f / l_a : 0.f, inv_b = l_b > 0.f ? 1.f / l_b : 0.f;
  T* out = mutable_rows_of<T>(p.o, b, h);
  float* lse = p.lse + (int64_t{b} * g.heads + h) * g.n_q;
  const int col0 = (lane % 4) * 2;
  if (row_a < m_valid) {
    uint32_t* dst = reinterpret_cast<uint32_t*>(out + int64_t{m0 + row_a} * p.o.sn + col0);
#pragma unroll
    for (int db = 0; db < kDb; ++db) dst[db * 4] = M::pack(o[db][0] * inv_a, o[db][1] * inv_a);
    if (lane % 4 == 0) lse[m0 + row_a] = (m_a + __log2f(l_a)) * kLn2;
  }
  if (row_b < m_valid) {
    uint32_t* dst = reinterpret_cast<uint32_t*>(out + int64_t{m0 + row_b} * p.o.sn + col0);
#pragma unroll
    for (int db = 0; db < kDb; ++db) dst[db * 4] = M::pack(o[db][2] * inv_b, o[db][3] * inv_b);
    if (lane % 4 == 0) lse[m0 + row_b] = (m_b + __log2f(l_b)) * kLn2;
  }
}

template <typename T, int D>
void launch_fwd_tc(const FwdParams& p, int batch_heads) {
  constexpr size_t smem = FwdTile<D>::kSmemElems * sizeof(T);
  auto kernel = fwd_tc_kernel<T, D>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(smem)));
  const dim3 grid((p.g.n_q + FwdTile<D>::kRows - 1) / FwdTile<D>::kRows, batch_heads);
  kernel<<<grid, FwdTile<D>::kThreads, smem, c10::cuda::getCurrentCUDAStream()>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---- generic forward: one warp per query row -----------------------------------------------

template <typename acc_t>
struct GenericFwdParams {
  RowsArg q, k, v, o;
  acc_t* lse;
  Geometry g;
  int d;
  acc_t scale;
};

constexpr int kGenericWarps = 8;
constexpr int kPerLane = kMaxGenericHeadDim / 32;  // head-dim elements per lane

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(256) fwd_generic_kernel(const GenericFwdParams<acc_t> p) {
  __shared__ acc_t sq[kGenericWarps][kMaxGenericHeadDim];
  const Geometry& g = p.g;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int r = blockIdx.x * kGenericWarps + warp;
  if (r >= g.n_q) return;  // whole warps only; no block-wide barrier follows
  const int b = blockIdx.y / g.heads, h = blockIdx.y % g.heads;
  const scalar_t* qr = rows_of<scalar_t>(p.q, b, h) + int64_t{r} * p.q.sn;
  const scalar_t* k = rows_of<scalar_t>(p.k, b, h);
  const scalar_t* v = rows_of<scalar_t>(p.v, b, h);
  for (int d = lane; d < p.d; d += 32) sq[warp][d] = static_cast<acc_t>(qr[d]);
  __syncwarp();

  const KeyRanges win = query_row_window(g, r);
  acc_t m = -std::numeric_limits<acc_t>::infinity(), l = 0;
  acc_t o[kPerLane];
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) o[i] = 0;
  for (int c = 0; c < win.count; ++c) {
    // selects keep the ranges in registers (a run-time index would put them on the stack)
    const int begin = static_cast<int>(c == 0 ? win.begin[0] : win.begin[1]);
    const int end = begin + static_cast<int>(c == 0 ? win.len[0] : win.len[1]);
    for (int t0 = begin; t0 < end; t0 += 32) {
      const int t = t0 + lane;
      acc_t s = -std::numeric_limits<acc_t>::infinity();
      if (t < end) {  // lane t0 + i scores key t0 + i
        const scalar_t* kr = k + int64_t{t} * p.k.sn;
        acc_t dot = 0;
        for (int d = 0; d < p.d; ++d) dot += sq[warp][d] * static_cast<acc_t>(kr[d]);
        s = dot * p.scale;
      }
      const acc_t m_new = max(m, warp_max(s));  // finite: the chunk has a key
      const acc_t alpha = exp_acc(m - m_new);
      const acc_t pr = t < end ? exp_acc(s - m_new) : acc_t(0);
      l = l * alpha + warp_sum(pr);
      m = m_new;
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) o[i] *= alpha;
      const int n = min(32, end - t0);
      for (int j = 0; j < n; ++j) {
        const acc_t pj = __shfl_sync(kFullMask, pr, j);
        const scalar_t* vr = v + int64_t{t0 + j} * p.v.sn;
#pragma unroll
        for (int i = 0; i < kPerLane; ++i) {
          const int d = lane + 32 * i;
          if (d < p.d) o[i] += pj * static_cast<acc_t>(vr[d]);
        }
      }
    }
  }
  scalar_t* orow = mutable_rows_of<scalar_t>(p.o, b, h) + int64_t{r} * p.o.sn;
  const acc_t inv = acc_t(1) / l;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int d = lane + 32 * i;
    if (d < p.d) orow[d] = static_cast<scalar_t>(o[i] * inv);
  }
  if (lane == 0) p.lse[(int64_t{b} * g.heads + h) * g.n_q + r] = m + log_acc(l);
}

template <typename scalar_t, typename acc_t>
void launch_fwd_generic(const GenericFwdParams<acc_t>& p, int batch_heads) {
  const dim3 grid((p.g.n_q + kGenericWarps - 1) / kGenericWarps, batch_heads);
  fwd_generic_kernel<scalar_t, acc_t>
      <<<grid, 32 * kGenericWarps, 0, c10::cuda::getCurrentCUDAStream()>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace
}  // namespace cuda

std::tuple<at::Tensor, at::Tensor> segment_attention_fwd_cuda(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, int64_t segments,
    int64_t window, int64_t shift, double scale) {
  using namespace cuda;
  const Geometry g =
      check_segment_attention("segment_attention_fwd", q_in, k_in, v_in, segments, window, shift);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const bool tc = tensor_core_path(q_in);
  const at::Tensor q = rows_ready(q_in, tc), k = rows_ready(k_in, tc), v = rows_ready(v_in, tc);
  Output out(q_in, tc);
  const auto stats = stats_dtype(q.scalar_type());
  at::Tensor lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(stats));
  const int batch_heads = static_cast<int>(q.size(0) * q.size(1));
  if (batch_heads == 0) return {out.finish(), lse};
  const int64_t d = q.size(3);

  dispatch_floating(q.scalar_type(), "segment_attention_fwd", [&](auto zero) {
    using scalar_t = decltype(zero);
    using acc_t = acc_type<scalar_t>;
    if constexpr (std::is_same_v<scalar_t, c10::BFloat16> || std::is_same_v<scalar_t, c10::Half>) {
      if (tc) {
        const FwdParams p{rows_arg(q), rows_arg(k), rows_arg(v), rows_arg(out.work),
                          lse.data_ptr<float>(), g, static_cast<float>(scale * 1.4426950408889634)};
        if (d == 32) launch_fwd_tc<scalar_t, 32>(p, batch_heads);
        else if (d == 64) launch_fwd_tc<scalar_t, 64>(p, batch_heads);
        else launch_fwd_tc<scalar_t, 128>(p, batch_heads);
        return;
      }
    }
    const GenericFwdParams<acc_t> p{rows_arg(q), rows_arg(k), rows_arg(v), rows_arg(out.work),
                                    lse.data_ptr<acc_t>(), g, static_cast<int>(d),
                                    static_cast<acc_t>(scale)};
    launch_fwd_generic<scalar_t, acc_t>(p, batch_heads);
  });
  return {out.finish(), lse};
}

}  // namespace mmattn
