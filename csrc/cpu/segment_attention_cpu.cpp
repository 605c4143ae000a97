// CPU segment attention (the two directions of RS-MMA), forward and backward.
//
// Work is blocked by query segment: a segment's window is at most two contiguous key
// ranges, which are copied (and upcast) once into a contiguous [mk, D] block. Queries are
// processed in chunks of kQueryChunk rows, so the score block of a chunk stays in cache;
// the N x M score matrix of the whole sequence never exists. Products go through ATen's
// BLAS (at::cpu::addmm_out); softmax statistics and accumulation are float32
// (float64 for float64 inputs).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/CPUFunctions.h>

#include <limits>
#include <vector>

#include "ops.h"
#include "rs_index.h"
#include "vec_math.h"

// MKL's thread-local thread count, where torch is built with MKL (a weak reference: null
// elsewhere). Each task already runs on its own thread, so its products must run serially;
// nested BLAS threads oversubscribe the cores and stall badly on a loaded machine.
extern "C" int MKL_Set_Num_Threads_Local(int) __attribute__((weak));  // the C API (by value)

namespace mmattn {
namespace {

struct SerialBlasGuard {
  int previous = 0;
  SerialBlasGuard() {
    if (MKL_Set_Num_Threads_Local) previous = MKL_Set_Num_Threads_Local(1);
  }
  ~SerialBlasGuard() {
    if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(previous);
  }
};

constexpr int64_t kQueryChunk = 128;

// Row-major `rows x cols` matrix at `p` with leading dimension `ld`, or its transpose.
template <typename T>
at::Tensor matrix(const T* p, int64_t rows, int64_t cols, int64_t ld, bool transposed) {
  auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  return transposed ? at::from_blob(const_cast<T*>(p), {rows, cols}, {1, ld}, opts)
                    : at::from_blob(const_cast<T*>(p), {rows, cols}, {ld, 1}, opts);
}

// Row-major C[m, n] = alpha * op(A) op(B) + beta * C (C is not read when beta == 0), through
// ATen's CPU BLAS kernel without the dispatcher.
template <typename T>
void gemm_rm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha,
             const T* a, int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  at::Tensor out = matrix(c, m, n, ldc, false);
  at::cpu::addmm_out(out, out, matrix(a, m, k, lda, trans_a), matrix(b, k, n, ldb, trans_b), beta, alpha);
}

// Rows [row0, row0 + rows) of one (b, h) slice of a [B, H, N, D] tensor with unit D stride.
template <typename scalar_t>
struct RowView {
  scalar_t* base;
  int64_t row_stride;
  scalar_t* row(int64_t r) const { return base + r * row_stride; }
};

template <typename scalar_t>
RowView<scalar_t> slice(const at::Tensor& t, int64_t b, int64_t h) {
  return {t.data_ptr<scalar_t>() + b * t.stride(0) + h * t.stride(1), t.stride(2)};
}

// dst[r, :] = src rows [begin, begin + rows), converted to acc_t.
template <typename scalar_t, typename acc_t>
void load_rows(const RowView<scalar_t>& src, int64_t begin, int64_t rows, int64_t d, acc_t* dst) {
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t* s = src.row(begin + r);
    for (int64_t j = 0; j < d; ++j) dst[r * d + j] = static_cast<acc_t>(s[j]);
  }
}

template <typename scalar_t, typename acc_t>
void store_rows(const acc_t* src, int64_t rows, int64_t d, const RowView<scalar_t>& dst, int64_t begin) {
  for (int64_t r = 0; r < rows; ++r) {
    scalar_t* o = dst.row(begin + r);
    for (int64_t j = 0; j < d; ++j) o[j] = static_cast<scalar_t>(src[r * d + j]);
  }
}

// The window's keys (or values) as one contiguous [mk, D] block.
template <typename scalar_t, typename acc_t>
void load_window(const RowView<scalar_t>& src, const KeyRanges& kr, int64_t d, acc_t* dst) {
  int64_t off = 0;
  for (int c = 0; c < kr.count; ++c) {
    load_rows(src, kr.begin[c], kr.len[c], d, dst + off * d);
    off += kr.len[c];
  }
}

// Softmax of each row of s[rows, n] in place (scores already scaled); lse[r] = log sum exp.
template <typename T>
MMATTN_INLINE void softmax_rows_impl(T* s, int64_t rows, int64_t n, T* lse) {
  for (int64_t r = 0; r < rows; ++r) {
    T* row = s + r * n;
    T mx = -std::numeric_limits<T>::infinity();
    MMATTN_SIMD_REDUCE(max : mx)
    for (int64_t j = 0; j < n; ++j) mx = std::max(mx, row[j]);
    T sum = 0;
    MMATTN_SIMD_REDUCE(+ : sum)
    for (int64_t j = 0; j < n; ++j) {
      row[j] = cpu::exp_(row[j] - mx);
      sum += row[j];
    }
    const T inv = T(1) / sum;
    for (int64_t j = 0; j < n; ++j) row[j] *= inv;
    lse[r] = mx + std::log(sum);
  }
}
MMATTN_CPU_CLONES void softmax_rows(float* s, int64_t rows, int64_t n, float* lse) {
  softmax_rows_impl(s, rows, n, lse);
}
void softmax_rows(double* s, int64_t rows, int64_t n, double* lse) {
  softmax_rows_impl(s, rows, n, lse);
}

// Backward of a chunk: p holds scores on entry and P = exp(s - lse) on exit; dp holds
// dP = dO V^T on entry and dS = P * (dP - delta) on exit.
template <typename T>
MMATTN_INLINE void softmax_grad_rows_impl(T* p, T* dp, int64_t rows, int64_t n, const T* lse,
                                          const T* delta) {
  for (int64_t r = 0; r < rows; ++r) {
    T* pr = p + r * n;
    T* dr = dp + r * n;
    const T l = lse[r], dl = delta[r];
    for (int64_t j = 0; j < n; ++j) {
      pr[j] = cpu::exp_(pr[j] - l);
      dr[j] = pr[j] * (dr[j] - dl);
    }
  }
}
MMATTN_CPU_CLONES void softmax_grad_rows(float* p, float* dp, int64_t rows, int64_t n,
                                         const float* lse, const float* delta) {
  softmax_grad_rows_impl(p, dp, rows, n, lse, delta);
}
void softmax_grad_rows(double* p, double* dp, int64_t rows, int64_t n, const double* lse,
                       const double* delta) {
  softmax_grad_rows_impl(p, dp, rows, n, lse, delta);
}

struct Problem {
  int64_t batch, heads, n_q, n_k, d, segments, window, shift;
  double scale;
};

Problem make_problem(const at::Tensor& q, const at::Tensor& k, int64_t segments,
                     int64_t window, int64_t shift, double scale) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4, "segment_attention: q and k must be 4-D [B, H, N, D]");
  TORCH_CHECK(segments >= 1 && window >= 1 && window <= segments,
              "segment_attention: need 1 <= window <= segments, got window=", window,
              ", segments=", segments);
  TORCH_CHECK(q.size(2) >= segments && k.size(2) >= segments,
              "segment_attention: every segment needs a token (n_q=", q.size(2),
              ", n_k=", k.size(2), ", segments=", segments, ")");
  return {q.size(0), q.size(1), q.size(2), k.size(2), q.size(3), segments, window,
          wrap_shift(shift, segments), scale};
}

// Unit stride along D lets the kernels read rows in place; any other strides are kept.
at::Tensor rows_contiguous(const at::Tensor& t) {
  return t.stride(-1) == 1 ? t : t.contiguous();
}

// Outputs get the strides of empty_like(input) (as the fake kernels promise). The kernels
// write rows with unit D stride: `work` is the output itself, or a stand-in copied back by
// `finish`.
struct Output {
  at::Tensor result, work;
  explicit Output(const at::Tensor& like)
      : result(at::empty_like(like)),
        work(result.stride(-1) == 1 ? result : at::empty_like(like, at::MemoryFormat::Contiguous)) {}
  at::Tensor finish() {
    if (!work.is_same(result)) result.copy_(work);
    return result;
  }
};

template <typename scalar_t, typename acc_t>
void forward_kernel(const Problem& p, const at::Tensor& q, const at::Tensor& k,
                    const at::Tensor& v, at::Tensor& out, at::Tensor& lse) {
  const int64_t d = p.d;
  at::parallel_for(0, p.batch * p.heads * p.segments, 1, [&](int64_t begin, int64_t end) {
    SerialBlasGuard serial;
    std::vector<acc_t> kw, vw, qc, s, oc;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t i = task % p.segments, bh = task / p.segments;
      const int64_t b = bh / p.heads, h = bh % p.heads;
      const KeyRanges kr = window_key_ranges(i, p.n_k, p.segments, p.window, p.shift);
      const int64_t mk = kr.total();
      kw.resize(mk * d);
      vw.resize(mk * d);
      load_window(slice<scalar_t>(k, b, h), kr, d, kw.data());
      load_window(slice<scalar_t>(v, b, h), kr, d, vw.data());
      const auto qv = slice<scalar_t>(q, b, h);
      const auto ov = slice<scalar_t>(out, b, h);
      acc_t* lse_bh = lse.data_ptr<acc_t>() + bh * p.n_q;
      const int64_t q0 = segment_begin(i, p.n_q, p.segments);
      const int64_t q1 = segment_begin(i + 1, p.n_q, p.segments);
      for (int64_t c0 = q0; c0 < q1; c0 += kQueryChunk) {
        const int64_t mq = std::min(kQueryChunk, q1 - c0);
        qc.resize(mq * d);
        s.resize(mq * mk);
        oc.resize(mq * d);
        load_rows(qv, c0, mq, d, qc.data());
        gemm_rm<acc_t>(false, true, mq, mk, d, acc_t(p.scale), qc.data(), d, kw.data(), d,
                       acc_t(0), s.data(), mk);
        softmax_rows(s.data(), mq, mk, lse_bh + c0);
        gemm_rm<acc_t>(false, false, mq, d, mk, acc_t(1), s.data(), mk, vw.data(), d, acc_t(0),
                       oc.data(), d);
        store_rows(oc.data(), mq, d, ov, c0);
      }
    }
  });
}

// One task per (b, h): query segments run in order and accumulate dK/dV of their windows
// into per-task buffers, so the result is deterministic and needs no atomics.
template <typename scalar_t, typename acc_t>
void backward_kernel(const Problem& p, const at::Tensor& dout, const at::Tensor& q,
                     const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
                     const at::Tensor& lse, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  const int64_t d = p.d;
  at::parallel_for(0, p.batch * p.heads, 1, [&](int64_t begin, int64_t end) {
    SerialBlasGuard serial;
    std::vector<acc_t> kw, vw, qc, doc, oc, s, dp, dqc, delta, dk_acc, dv_acc;
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / p.heads, h = bh % p.heads;
      const auto qv = slice<scalar_t>(q, b, h), dov = slice<scalar_t>(dout, b, h);
      const auto ov = slice<scalar_t>(out, b, h), dqv = slice<scalar_t>(dq, b, h);
      const acc_t* lse_bh = lse.data_ptr<acc_t>() + bh * p.n_q;
      dk_acc.assign(p.n_k * d, acc_t(0));
      dv_acc.assign(p.n_k * d, acc_t(0));
      for (int64_t i = 0; i < p.segments; ++i) {
        const KeyRanges kr = window_key_ranges(i, p.n_k, p.segments, p.window, p.shift);
        const int64_t mk = kr.total();
        kw.resize(mk * d);
        vw.resize(mk * d);
        load_window(slice<scalar_t>(k, b, h), kr, d, kw.data());
        load_window(slice<scalar_t>(v, b, h), kr, d, vw.data());
        const int64_t q0 = segment_begin(i, p.n_q, p.segments);
        const int64_t q1 = segment_begin(i + 1, p.n_q, p.segments);
        for (int64_t c0 = q0; c0 < q1; c0 += kQueryChunk) {
          const int64_t mq = std::min(kQueryChunk, q1 - c0);
          qc.resize(mq * d); doc.resize(mq * d); oc.resize(mq * d); dqc.resize(mq * d);
          s.resize(mq * mk); dp.resize(mq * mk); delta.resize(mq);
          load_rows(qv, c0, mq, d, qc.data());
          load_rows(dov, c0, mq, d, doc.data());
          load_rows(ov, c0, mq, d, oc.data());
          for (int64_t r = 0; r < mq; ++r) {  // delta = rowsum(dO * O)
            acc_t acc = 0;
            MMATTN_SIMD_REDUCE(+ : acc)
            for (int64_t j = 0; j < d; ++j) acc += doc[r * d + j] * oc[r * d + j];
            delta[r] = acc;
          }
          gemm_rm<acc_t>(false, true, mq, mk, d, acc_t(p.scale), qc.data(), d, kw.data(), d,
                         acc_t(0), s.data(), mk);
          gemm_rm<acc_t>(false, true, mq, mk, d, acc_t(1), doc.data(), d, vw.data(), d,
                         acc_t(0), dp.data(), mk);
          softmax_grad_rows(s.data(), dp.data(), mq, mk, lse_bh + c0, delta.data());
          // dQ = scale * dS K
          gemm_rm<acc_t>(false, false, mq, d, mk, acc_t(p.scale), dp.data(), mk, kw.data(), d,
                         acc_t(0), dqc.data(), d);
          store_rows(dqc.data(), mq, d, dqv, c0);
          // dV[range] += P^T dO, dK[range] += scale * dS^T Q, range by range.
          int64_t col = 0;
          for (int c = 0; c < kr.count; ++c) {
            const int64_t len = kr.len[c], row = kr.begin[c];
            gemm_rm<acc_t>(true, false, len, d, mq, acc_t(1), s.data() + col, mk, doc.data(), d,
                           acc_t(1), dv_acc.data() + row * d, d);
            gemm_rm<acc_t>(true, false, len, d, mq, acc_t(p.scale), dp.data() + col, mk,
                           qc.data(), d, acc_t(1), dk_acc.data() + row * d, d);
            col += len;
          }
        }
      }
      store_rows(dk_acc.data(), p.n_k, d, slice<scalar_t>(dk, b, h), 0);
      store_rows(dv_acc.data(), p.n_k, d, slice<scalar_t>(dv, b, h), 0);
    }
  });
}

at::ScalarType stats_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> segment_attention_fwd_cpu(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, int64_t segments,
    int64_t window, int64_t shift, double scale) {
  const Problem p = make_problem(q_in, k_in, segments, window, shift, scale);
  const at::Tensor q = rows_contiguous(q_in), k = rows_contiguous(k_in), v = rows_contiguous(v_in);
  Output out(q_in);
  at::Tensor lse = at::empty({p.batch, p.heads, p.n_q}, q.options().dtype(stats_dtype(q.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "segment_attention_fwd_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    forward_kernel<scalar_t, acc_t>(p, q, k, v, out.work, lse);
  });
  return {out.finish(), lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> segment_attention_bwd_cpu(
    const at::Tensor& dout_in, const at::Tensor& q_in, const at::Tensor& k_in,
    const at::Tensor& v_in, const at::Tensor& out_in, const at::Tensor& lse_in, int64_t segments,
    int64_t window, int64_t shift, double scale) {
  const Problem p = make_problem(q_in, k_in, segments, window, shift, scale);
  const at::Tensor q = rows_contiguous(q_in), k = rows_contiguous(k_in), v = rows_contiguous(v_in);
  const at::Tensor dout = rows_contiguous(dout_in), out = rows_contiguous(out_in);
  const at::Tensor lse = lse_in.contiguous();
  Output dq(q_in), dk(k_in), dv(v_in);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "segment_attention_bwd_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    backward_kernel<scalar_t, acc_t>(p, dout, q, k, v, out, lse, dq.work, dk.work, dv.work);
  });
  return {dq.finish(), dk.finish(), dv.finish()};
}

}  // namespace mmattn
