// CPU segment attention (the two directions of RS-MMA), forward and backward.
//
// Work is blocked by query block: a run of query rows that all see the same keys (a segment,
// or any run of rows when the window covers every segment). A block's keys are at most two
// contiguous token ranges ("parts"); products are issued part by part, so keys and values
// are never gathered. Queries are processed in chunks of at most kQueryChunk rows, so a
// chunk's score block stays in cache; the N x M score matrix never exists.
//
// float32/float64 rows are read and written in place (unit stride along D, any other
// strides); bfloat16/float16 rows are converted to float in per-thread buffers. Products go
// to torch's BLAS, one thread each; tasks are handed out dynamically. Softmax statistics and
// accumulation are float32 (float64 for float64 inputs).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/CPUFunctions.h>

#include <atomic>
#include <limits>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "ops.h"
#include "rs_index.h"
#include "vec_math.h"

// MKL's thread-local thread count, where torch is built with MKL (a weak reference: null
// elsewhere). Each task already runs on its own thread, so its products must run serially;
// nested BLAS threads oversubscribe the cores and stall badly on a loaded machine.
extern "C" int MKL_Set_Num_Threads_Local(int) __attribute__((weak));  // the C API (by value)
// Fortran BLAS products, exported by torch builds with BLAS (weak: null elsewhere).
extern "C" void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*,
                       const float*, const int*, const float*, const int*, const float*, float*,
                       const int*) __attribute__((weak));
extern "C" void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*,
                       const double*, const int*, const double*, const int*, const double*,
                       double*, const int*) __attribute__((weak));

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

// Hands out tasks 0 .. n-1 one at a time to ATen's intra-op threads: on a shared machine a
// thread that loses its core takes fewer tasks instead of holding up the others. Each thread
// calls `worker(queue)` once (per-thread state lives in the worker) and pops until empty.
// Results must not depend on which thread runs a task.
class TaskQueue {
 public:
  explicit TaskQueue(int64_t n) : n_(n) {}
  bool pop(int64_t& task) {
    task = next_.fetch_add(1, std::memory_order_relaxed);
    return task < n_;
  }

 private:
  const int64_t n_;
  std::atomic<int64_t> next_{0};
};

template <typename Worker>
void run_tasks(int64_t n, const Worker& worker) {
  TaskQueue queue(n);
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(n, at::get_num_threads()));
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    SerialBlasGuard serial;
    worker(queue);
  });
}

constexpr int64_t kQueryChunk = 256;

// Row-major matrix: element (r, c) at p[r * ld + c].
template <typename T>
struct Mat {
  T* p;
  int64_t ld;
  T* row(int64_t r) const { return p + r * ld; }
};

// Row-major `rows x cols` matrix at `p` with leading dimension `ld`, or its transpose.
template <typename T>
at::Tensor matrix(const T* p, int64_t rows, int64_t cols, int64_t ld, bool transposed) {
  auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  return transposed ? at::from_blob(const_cast<T*>(p), {rows, cols}, {1, ld}, opts)
                    : at::from_blob(const_cast<T*>(p), {rows, cols}, {ld, 1}, opts);
}

// Column-major Fortran BLAS gemm, called as ATen calls it.
template <typename T>
using FortranGemm = void(const char*, const char*, const int*, const int*, const int*, const T*,
                         const T*, const int*, const T*, const int*, const T*, T*, const int*);
FortranGemm<float>* fortran_gemm(float) { return sgemm_; }
FortranGemm<double>* fortran_gemm(double) { return dgemm_; }

// Row-major C[m, n] = alpha * op(A) op(B) + beta * C (C is not read when beta == 0). Straight
// to BLAS where torch exports it (a product of a few microseconds is otherwise dominated by
// making tensors around the pointers), else through ATen's CPU BLAS kernel.
template <typename T>
void gemm_rm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha,
             const T* a, int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  FortranGemm<T>* blas = fortran_gemm(T());
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  const bool blas_shaped = ldc >= n && lda >= (trans_a ? m : k) && ldb >= (trans_b ? k : n) &&
                           std::max({lda, ldb, ldc, m, n, k}) <= kIntMax;
  if (blas != nullptr && blas_shaped) {
    // Row-major C is column-major C^T = op(B)^T op(A)^T.
    const int im = static_cast<int>(n), in = static_cast<int>(m), ik = static_cast<int>(k);
    const int ila = static_cast<int>(ldb), ilb = static_cast<int>(lda), ilc = static_cast<int>(ldc);
    blas(trans_b ? "T" : "N", trans_a ? "T" : "N", &im, &in, &ik, &alpha, b, &ila, a, &ilb, &beta,
         c, &ilc);
    return;
  }
  at::Tensor out = matrix(c, m, n, ldc, false);
  at::cpu::addmm_out(out, out, matrix(a, m, k, lda, trans_a), matrix(b, k, n, ldb, trans_b), beta, alpha);
}

// The [N, D] rows of one (b, h) slice of a [B, H, N, D] tensor with unit D stride.
template <typename scalar_t>
Mat<scalar_t> slice(const at::Tensor& t, int64_t b, int64_t h) {
  return {t.data_ptr<scalar_t>() + b * t.stride(0) + h * t.stride(1), t.stride(2)};
}

// Rows [begin, begin + rows) of `src` as acc_t: in place when the types agree, else
// converted into `buf`.
template <typename acc_t, typename scalar_t>
Mat<const acc_t> read_rows(const Mat<scalar_t>& src, int64_t begin, int64_t rows, int64_t d,
                           std::vector<acc_t>& buf) {
  if constexpr (std::is_same_v<acc_t, scalar_t>) {
    return {src.row(begin), src.ld};
  } else {
    buf.resize(rows * d);
    for (int64_t r = 0; r < rows; ++r) {
      const scalar_t* s = src.row(begin + r);
      for (int64_t j = 0; j < d; ++j) buf[r * d + j] = static_cast<acc_t>(s[j]);
    }
    return {buf.data(), d};
  }
}

// Where rows [begin, begin + rows) of `dst` are computed in acc_t: in place when the types
// agree, else in `buf` (then written back by `write_rows`).
template <typename acc_t, typename scalar_t>
Mat<acc_t> rows_to_write(const Mat<scalar_t>& dst, int64_t begin, int64_t rows, int64_t d,
                         std::vector<acc_t>& buf) {
  if constexpr (std::is_same_v<acc_t, scalar_t>) {
    return {dst.row(begin), dst.ld};
  } else {
    buf.resize(rows * d);
    return {buf.data(), d};
  }
}

// Writes rows computed in a buffer by `rows_to_write` back to `dst` (nothing to do in place).
template <typename acc_t, typename scalar_t>
void write_rows(const Mat<acc_t>& src, int64_t rows, int64_t d, const Mat<scalar_t>& dst,
                int64_t begin) {
  if constexpr (!std::is_same_v<acc_t, scalar_t>) {
    for (int64_t r = 0; r < rows; ++r) {
      scalar_t* o = dst.row(begin + r);
      for (int64_t j = 0; j < d; ++j) o[j] = static_cast<scalar_t>(src.row(r)[j]);
    }
  }
}

// A query block: rows [q0, q1) of a (b, h) slice, all attending to the same key ranges.
struct QueryBlock {
  int64_t q0, q1;
  KeyRanges keys;
};

// The keys (or values) of a block, range by range, as acc_t rows.
template <typename acc_t>
struct Window {
  Mat<const acc_t> part[2];
};

template <typename acc_t, typename scalar_t>
Window<acc_t> read_window(const Mat<scalar_t>& src, const KeyRanges& kr, int64_t d,
                          std::vector<acc_t> (&buf)[2]) {
  Window<acc_t> w{};
  for (int c = 0; c < kr.count; ++c) w.part[c] = read_rows(src, kr.begin[c], kr.len[c], d, buf[c]);
  return w;
}

// Offset of part c's columns in a score row.
MMATTN_INLINE int64_t part_col(const KeyRanges& kr, int c) { return c == 0 ? 0 : kr.len[0]; }

// x[r, :n] *= f[r] (leading dimension ld).
template <typename T>
MMATTN_INLINE void scale_rows_impl(T* x, int64_t rows, int64_t n, int64_t ld, const T* f) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < n; ++j) x[r * ld + j] *= f[r];
}
MMATTN_CPU_CLONES void scale_rows(float* x, int64_t rows, int64_t n, int64_t ld, const float* f) {
  scale_rows_impl(x, rows, n, ld, f);
}
void scale_rows(double* x, int64_t rows, int64_t n, int64_t ld, const double* f) {
  scale_rows_impl(x, rows, n, ld, f);
}

// Each row of s[rows, n] (scaled scores, leading dimension ld) becomes exp(s - max),
// unnormalised; lse[r] = log sum exp and inv[r] = 1 / sum exp(s - max).
template <typename T>
MMATTN_INLINE void softmax_rows_impl(T* s, int64_t rows, int64_t n, int64_t ld, T* lse, T* inv) {
  for (int64_t r = 0; r < rows; ++r) {
    T* row = s + r * ld;
    T mx = -std::numeric_limits<T>::infinity();
    MMATTN_SIMD_REDUCE(max : mx)
    for (int64_t j = 0; j < n; ++j) mx = row[j] > mx ? row[j] : mx;
    T sum = 0;
    MMATTN_SIMD_REDUCE(+ : sum)
    for (int64_t j = 0; j < n; ++j) {
      row[j] = cpu::exp_(row[j] - mx);
      sum += row[j];
    }
    inv[r] = T(1) / sum;
    lse[r] = mx + std::log(sum);
  }
}
MMATTN_CPU_CLONES void softmax_rows(float* s, int64_t rows, int64_t n, int64_t ld, float* lse,
                                    float* inv) {
  softmax_rows_impl(s, rows, n, ld, lse, inv);
}
void softmax_rows(double* s, int64_t rows, int64_t n, int64_t ld, double* lse, double* inv) {
  softmax_rows_impl(s, rows, n, ld, lse, inv);
}

// Backward of a chunk: p holds scores on entry and P = exp(s - lse) on exit; dp holds
// dP = dO V^T on entry and dS = P * (dP - delta) on exit.
template <typename T>
MMATTN_INLINE void softmax_grad_rows_impl(T* p, T* dp, int64_t rows, int64_t n, int64_t ld,
                                          const T* lse, const T* delta) {
  for (int64_t r = 0; r < rows; ++r) {
    T* pr = p + r * ld;
    T* dr = dp + r * ld;
    const T l = lse[r], dl = delta[r];
    for (int64_t j = 0; j < n; ++j) {
      pr[j] = cpu::exp_(pr[j] - l);
      dr[j] = pr[j] * (dr[j] - dl);
    }
  }
}
MMATTN_CPU_CLONES void softmax_grad_rows(float* p, float* dp, int64_t rows, int64_t n,
                                         int64_t ld, const float* lse, const float* delta) {
  softmax_grad_rows_impl(p, dp, rows, n, ld, lse, delta);
}
void softmax_grad_rows(double* p, double* dp, int64_t rows, int64_t n, int64_t ld,
                       const double* lse, const double* delta) {
  softmax_grad_rows_impl(p, dp, rows, n, ld, lse, delta);
}

// Leading dimension of a score block with n columns: an odd number of 64-byte lines, so
// that walking down a column (the transposed products of the backward) does not hit the
// same cache sets over and over as a power-of-two stride would.
template <typename T>
int64_t score_ld(int64_t n) {
  constexpr int64_t line = 64 / sizeof(T);
  const int64_t lines = (n + line - 1) / line;
  return (lines | 1) * line;
}

// delta[r] = dot(a[r, :d], b[r, :d]).
template <typename T>
MMATTN_INLINE void row_dots_impl(const T* a, int64_t lda, const T* b, int64_t ldb, int64_t rows,
                                 int64_t d, T* delta) {
  for (int64_t r = 0; r < rows; ++r) {
    T acc = 0;
    MMATTN_SIMD_REDUCE(+ : acc)
    for (int64_t j = 0; j < d; ++j) acc += a[r * lda + j] * b[r * ldb + j];
    delta[r] = acc;
  }
}
MMATTN_CPU_CLONES void row_dots(const float* a, int64_t lda, const float* b, int64_t ldb,
                                int64_t rows, int64_t d, float* delta) {
  row_dots_impl(a, lda, b, ldb, rows, d, delta);
}
void row_dots(const double* a, int64_t lda, const double* b, int64_t ldb, int64_t rows,
              int64_t d, double* delta) {
  row_dots_impl(a, lda, b, ldb, rows, d, delta);
}

struct Problem {
  int64_t batch, heads, n_q, n_k, d, segments, window, shift;
  double scale;

  // The window covers every segment: all queries see all keys, so blocks need not follow
  // segment boundaries (short segments are merged into bigger products).
  bool full() const { return window == segments; }
  // Query blocks per (b, h) slice.
  int64_t blocks() const { return full() ? (n_q + kQueryChunk - 1) / kQueryChunk : segments; }
  QueryBlock block(int64_t j) const {
    if (full()) {  // balanced chunks of at most kQueryChunk rows
      const int64_t n = blocks();
      return {j * n_q / n, (j + 1) * n_q / n, KeyRanges{{0, 0}, {n_k, 0}, 1}};
    }
    return {segment_begin(j, n_q, segments), segment_begin(j + 1, n_q, segments),
            window_key_ranges(j, n_k, segments, window, shift)};
  }
};

// Splits [q0, q1) into balanced chunks of at most kQueryChunk rows: calls f(c0, rows).
template <typename F>
void for_each_chunk(const QueryBlock& blk, const F& f) {
  const int64_t rows = blk.q1 - blk.q0, n = (rows + kQueryChunk - 1) / kQueryChunk;
  for (int64_t c = 0; c < n; ++c) {
    const int64_t c0 = blk.q0 + c * rows / n;
    f(c0, blk.q0 + (c + 1) * rows / n - c0);
  }
}

// q, k, v as check_segment_attention accepts them
Problem make_problem(const at::Tensor& q, const at::Tensor& k, int64_t segments,
                     int64_t window, int64_t shift, double scale) {
  return {q.size(0), q.size(1), q.size(2), k.size(2), q.size(3), segments, window,
          wrap_shift(shift, segments), scale};
}

// Unit stride along D lets the kernels read rows in place; any other strides are kept.
at::Tensor rows_contiguous(const at::Tensor& t) {
  return t.stride(-1) == 1 ? t : t.contiguous();
}

// Outputs get the strides of empty_rows_like(input) (as the fake kernels promise). The kernels
// write rows with unit D stride: `work` is the output itself, or a stand-in copied back by
// `finish`.
struct Output {
  at::Tensor result, work;
  explicit Output(const at::Tensor& like)
      : result(empty_rows_like(like)),
        work(result.stride(-1) == 1 ? result : empty_cached(like.sizes(), like.options())) {}
  at::Tensor finish() {
    if (!work.is_same(result)) result.copy_(work);
    return result;
  }
};

// One task per (b, h, query block).
template <typename scalar_t, typename acc_t>
void forward_kernel(const Problem& p, const at::Tensor& q, const at::Tensor& k,
                    const at::Tensor& v, at::Tensor& out, at::Tensor& lse) {
  const int64_t d = p.d, blocks = p.blocks();
  run_tasks(p.batch * p.heads * blocks, [&](TaskQueue& queue) {
    std::vector<acc_t> kbuf[2], vbuf[2], qbuf, obuf, s, inv;
    for (int64_t task; queue.pop(task);) {
      const int64_t bh = task / blocks, b = bh / p.heads, h = bh % p.heads;
      const QueryBlock blk = p.block(task % blocks);
      const KeyRanges& kr = blk.keys;
      const int64_t mk = kr.total(), ld = score_ld<acc_t>(mk);
      const Window<acc_t> kw = read_window(slice<scalar_t>(k, b, h), kr, d, kbuf);
      const Window<acc_t> vw = read_window(slice<scalar_t>(v, b, h), kr, d, vbuf);
      const auto qv = slice<scalar_t>(q, b, h), ov = slice<scalar_t>(out, b, h);
      acc_t* lse_bh = lse.data_ptr<acc_t>() + bh * p.n_q;
      for_each_chunk(blk, [&](int64_t c0, int64_t mq) {
        s.resize(mq * ld);
        inv.resize(mq);
        const Mat<const acc_t> qc = read_rows(qv, c0, mq, d, qbuf);
        for (int c = 0; c < kr.count; ++c)
          gemm_rm<acc_t>(false, true, mq, kr.len[c], d, acc_t(p.scale), qc.p, qc.ld, kw.part[c].p,
                         kw.part[c].ld, acc_t(0), s.data() + part_col(kr, c), ld);
        softmax_rows(s.data(), mq, mk, ld, lse_bh + c0, inv.data());
        const Mat<acc_t> oc = rows_to_write(ov, c0, mq, d, obuf);
        for (int c = 0; c < kr.count; ++c)
          gemm_rm<acc_t>(false, false, mq, d, kr.len[c], acc_t(1), s.data() + part_col(kr, c), ld,
                         vw.part[c].p, vw.part[c].ld, acc_t(c == 0 ? 0 : 1), oc.p, oc.ld);
        scale_rows(oc.p, mq, d, oc.ld, inv.data());  // the softmax's normalisation
        write_rows(oc, mq, d, ov, c0);
      });
    }
  });
}

// One task per (b, h): its query blocks run in order and accumulate dK/dV of their windows
// (in the outputs themselves, or float buffers for 16-bit types), so the result is
// deterministic and needs no atomics.
template <typename scalar_t, typename acc_t>
void backward_kernel(const Problem& p, const at::Tensor& dout, const at::Tensor& q,
                     const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
                     const at::Tensor& lse, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  const int64_t d = p.d, blocks = p.blocks();
  run_tasks(p.batch * p.heads, [&](TaskQueue& queue) {
    std::vector<acc_t> kbuf[2], vbuf[2], qbuf, dobuf, obuf, dqbuf, dkbuf, dvbuf, s, dp, delta;
    for (int64_t bh; queue.pop(bh);) {
      const int64_t b = bh / p.heads, h = bh % p.heads;
      const auto qv = slice<scalar_t>(q, b, h), dov = slice<scalar_t>(dout, b, h);
      const auto ov = slice<scalar_t>(out, b, h), dqv = slice<scalar_t>(dq, b, h);
      const auto dkv = slice<scalar_t>(dk, b, h), dvv = slice<scalar_t>(dv, b, h);
      const acc_t* lse_bh = lse.data_ptr<acc_t>() + bh * p.n_q;
      const Mat<acc_t> dk_acc = rows_to_write(dkv, 0, p.n_k, d, dkbuf);
      const Mat<acc_t> dv_acc = rows_to_write(dvv, 0, p.n_k, d, dvbuf);
      for (int64_t r = 0; r < p.n_k; ++r) {
        std::fill_n(dk_acc.row(r), d, acc_t(0));
        std::fill_n(dv_acc.row(r), d, acc_t(0));
      }
      for (int64_t j = 0; j < blocks; ++j) {
        const QueryBlock blk = p.block(j);
        const KeyRanges& kr = blk.keys;
        const int64_t mk = kr.total(), ld = score_ld<acc_t>(mk);
        const Window<acc_t> kw = read_window(slice<scalar_t>(k, b, h), kr, d, kbuf);
        const Window<acc_t> vw = read_window(slice<scalar_t>(v, b, h), kr, d, vbuf);
        for_each_chunk(blk, [&](int64_t c0, int64_t mq) {
          s.resize(mq * ld);
          dp.resize(mq * ld);
          delta.resize(mq);
          const Mat<const acc_t> qc = read_rows(qv, c0, mq, d, qbuf);
          const Mat<const acc_t> doc = read_rows(dov, c0, mq, d, dobuf);
          const Mat<const acc_t> oc = read_rows(ov, c0, mq, d, obuf);
          row_dots(doc.p, doc.ld, oc.p, oc.ld, mq, d, delta.data());  // delta = rowsum(dO * O)
          for (int c = 0; c < kr.count; ++c) {
            const int64_t col = part_col(kr, c);
            gemm_rm<acc_t>(false, true, mq, kr.len[c], d, acc_t(p.scale), qc.p, qc.ld,
                           kw.part[c].p, kw.part[c].ld, acc_t(0), s.data() + col, ld);
            gemm_rm<acc_t>(false, true, mq, kr.len[c], d, acc_t(1), doc.p, doc.ld, vw.part[c].p,
                           vw.part[c].ld, acc_t(0), dp.data() + col, ld);
          }
          softmax_grad_rows(s.data(), dp.data(), mq, mk, ld, lse_bh + c0, delta.data());
          // dQ = scale * dS K
          const Mat<acc_t> dqc = rows_to_write(dqv, c0, mq, d, dqbuf);
          for (int c = 0; c < kr.count; ++c)
            gemm_rm<acc_t>(false, false, mq, d, kr.len[c], acc_t(p.scale),
                           dp.data() + part_col(kr, c), ld, kw.part[c].p, kw.part[c].ld,
                           acc_t(c == 0 ? 0 : 1), dqc.p, dqc.ld);
          write_rows(dqc, mq, d, dqv, c0);
          // dV[range] += P^T dO, dK[range] += scale * dS^T Q, range by range.
          for (int c = 0; c < kr.count; ++c) {
            const int64_t col = part_col(kr, c), len = kr.len[c], row = kr.begin[c];
            gemm_rm<acc_t>(true, false, len, d, mq, acc_t(1), s.data() + col, ld, doc.p, doc.ld,
                           acc_t(1), dv_acc.row(row), dv_acc.ld);
            gemm_rm<acc_t>(true, false, len, d, mq, acc_t(p.scale), dp.data() + col, ld, qc.p,
                           qc.ld, acc_t(1), dk_acc.row(row), dk_acc.ld);
          }
        });
      }
      write_rows(dk_acc, p.n_k, d, dkv, 0);
      write_rows(dv_acc, p.n_k, d, dvv, 0);
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> segment_attention_fwd_cpu(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, int64_t segments,
    int64_t window, int64_t shift, double scale) {
  check_segment_attention("segment_attention_fwd", q_in, k_in, v_in, segments, window);
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
  check_segment_attention("segment_attention_bwd", q_in, k_in, v_in, segments, window);
  check_segment_attention_grads("segment_attention_bwd", dout_in, q_in, out_in, lse_in);
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
