// CPU GroupNorm + affine + FiLM + SiLU, forward and backward, fused.
//
// x is viewed as [B, F, C, S] with its own strides (F = 1 for channel_dim 1; S flattens the
// spatial dims), so [B, F, C, H, W] video and channels_last inputs need no permute copy.
// Two kernels, by which of C and S is innermost in memory:
// - planar (S inner, e.g. contiguous [B, C, L]): one task per (sample, group); a row is one
//   channel of one frame, `S` elements long. The group is read once from memory for the
//   statistics (mean, then centred sum of squares: the second read hits cache) and once more
//   to normalise.
// - channels-inner (C contiguous, e.g. frames-last video, channels_last): a row is one
//   (frame, position) with all C channels. Tasks are chunks of rows; every pass streams the
//   tensor with per-channel vectors. Statistics are per-channel (mean, centred sum of
//   squares) per chunk (the second read hits cache), combined per group in float64 with
//   Chan's parallel formula.
// The backward makes two passes (per-channel gradient sums, then dx) and recomputes the
// activation's derivative in the second instead of storing it.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <vector>

#include "block_cache.h"
#include "checks.h"
#include "norm_layout.h"
#include "ops.h"
#include "vec_math.h"

namespace mmattn {
namespace {

// Elements of one channels-inner task (rows * C): small enough to stay in L2 between the
// two statistics reads.
constexpr int64_t kChunkElems = 16384;

// ---------------------------------------------------------------------------------------------
// Row kernels. float: one SIMD clone per instruction set; double: plain.
// ---------------------------------------------------------------------------------------------

template <typename T, bool kSilu>
MMATTN_INLINE T act(T z) { return kSilu ? z * cpu::sigmoid_(z) : z; }

// dL/dz of y = act(z), z = x * a + b.
template <typename T, bool kSilu>
MMATTN_INLINE T act_grad(T x, T dy, T a, T b) {
  if (!kSilu) return dy;
  const T z = x * a + b;
  const T sg = cpu::sigmoid_(z);
  return dy * sg * (T(1) + z * (T(1) - sg));
}

// --- planar rows: one channel per row, scalar coefficients ---

template <typename T>
MMATTN_INLINE T row_sum_impl(const T* x, int64_t n) {
  T acc = 0;
  MMATTN_SIMD_REDUCE(+ : acc)
  for (int64_t j = 0; j < n; ++j) acc += x[j];
  return acc;
}
template <typename T>
MMATTN_INLINE T row_sq_dev_impl(const T* x, int64_t n, T mean) {
  T acc = 0;
  MMATTN_SIMD_REDUCE(+ : acc)
  for (int64_t j = 0; j < n; ++j) acc += (x[j] - mean) * (x[j] - mean);
  return acc;
}
MMATTN_CPU_CLONES float row_sum(const float* x, int64_t n) { return row_sum_impl(x, n); }
MMATTN_CPU_CLONES float row_sq_dev(const float* x, int64_t n, float m) { return row_sq_dev_impl(x, n, m); }
double row_sum(const double* x, int64_t n) { return row_sum_impl(x, n); }
double row_sq_dev(const double* x, int64_t n, double m) { return row_sq_dev_impl(x, n, m); }

// y[j] = act(x[j] * a + b)
template <typename T, bool kSilu>
MMATTN_INLINE void apply_loop(const T* x, T* y, int64_t n, T a, T b) {
  for (int64_t j = 0; j < n; ++j) y[j] = act<T, kSilu>(x[j] * a + b);
}
template <typename T>
MMATTN_INLINE void apply_row_impl(const T* x, T* y, int64_t n, T a, T b, bool silu) {
  silu ? apply_loop<T, true>(x, y, n, a, b) : apply_loop<T, false>(x, y, n, a, b);
}
MMATTN_CPU_CLONES void apply_row(const float* x, float* y, int64_t n, float a, float b, bool silu) {
  apply_row_impl(x, y, n, a, b, silu);
}
void apply_row(const double* x, double* y, int64_t n, double a, double b, bool silu) {
  apply_row_impl(x, y, n, a, b, silu);
}

// s1 += sum dz, s2 += sum dz * (x - mean), with dz = dL/dz of each element.
template <typename T, bool kSilu>
MMATTN_INLINE void grad_loop(const T* x, const T* dy, int64_t n, T a, T b, T mean, T& s1, T& s2) {
  T acc1 = 0, acc2 = 0;
  MMATTN_SIMD_REDUCE(+ : acc1, acc2)
  for (int64_t j = 0; j < n; ++j) {
    const T g = act_grad<T, kSilu>(x[j], dy[j], a, b);
    acc1 += g;
    acc2 += g * (x[j] - mean);
  }
  s1 += acc1;
  s2 += acc2;
}
template <typename T>
MMATTN_INLINE void grad_row_impl(const T* x, const T* dy, int64_t n, T a, T b, T mean, T& s1,
                                 T& s2, bool silu) {
  silu ? grad_loop<T, true>(x, dy, n, a, b, mean, s1, s2)
       : grad_loop<T, false>(x, dy, n, a, b, mean, s1, s2);
}
MMATTN_CPU_CLONES void grad_row(const float* x, const float* dy, int64_t n, float a, float b,
                                float mean, float& s1, float& s2, bool silu) {
  grad_row_impl(x, dy, n, a, b, mean, s1, s2, silu);
}
void grad_row(const double* x, const double* dy, int64_t n, double a, double b, double mean,
              double& s1, double& s2, bool silu) {
  grad_row_impl(x, dy, n, a, b, mean, s1, s2, silu);
}

// dx[j] = k_dz * dz + k_x * (x[j] - mean) + k_0, dz recomputed from x and dy.
template <typename T, bool kSilu>
MMATTN_INLINE void dx_loop(const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dx,
                           int64_t n, T a, T b, T k_dz, T k_x, T mean, T k_0) {
  for (int64_t j = 0; j < n; ++j)
    dx[j] = k_dz * act_grad<T, kSilu>(x[j], dy[j], a, b) + k_x * (x[j] - mean) + k_0;
}
template <typename T>
MMATTN_INLINE void dx_row_impl(const T* x, const T* dy, T* dx, int64_t n, T a, T b, T k_dz, T k_x,
                               T mean, T k_0, bool silu) {
  silu ? dx_loop<T, true>(x, dy, dx, n, a, b, k_dz, k_x, mean, k_0)
       : dx_loop<T, false>(x, dy, dx, n, a, b, k_dz, k_x, mean, k_0);
}
MMATTN_CPU_CLONES void dx_row(const float* x, const float* dy, float* dx, int64_t n, float a,
                              float b, float k_dz, float k_x, float mean, float k_0, bool silu) {
  dx_row_impl(x, dy, dx, n, a, b, k_dz, k_x, mean, k_0, silu);
}
void dx_row(const double* x, const double* dy, double* dx, int64_t n, double a, double b,
            double k_dz, double k_x, double mean, double k_0, bool silu) {
  dx_row_impl(x, dy, dx, n, a, b, k_dz, k_x, mean, k_0, silu);
}

// --- channels-inner rows: element j is channel c0 + j, per-channel coefficient vectors ---

template <typename T>
MMATTN_INLINE void add_row_impl(const T* __restrict__ x, T* __restrict__ acc, int64_t n) {
  for (int64_t j = 0; j < n; ++j) acc[j] += x[j];
}
template <typename T>
MMATTN_INLINE void add_sq_dev_row_impl(const T* __restrict__ x, const T* __restrict__ mean,
                                       T* __restrict__ acc, int64_t n) {
  for (int64_t j = 0; j < n; ++j) acc[j] += (x[j] - mean[j]) * (x[j] - mean[j]);
}
MMATTN_CPU_CLONES void add_row(const float* x, float* acc, int64_t n) { add_row_impl(x, acc, n); }
void add_row(const double* x, double* acc, int64_t n) { add_row_impl(x, acc, n); }
MMATTN_CPU_CLONES void add_sq_dev_row(const float* x, const float* mean, float* acc, int64_t n) {
  add_sq_dev_row_impl(x, mean, acc, n);
}
void add_sq_dev_row(const double* x, const double* mean, double* acc, int64_t n) {
  add_sq_dev_row_impl(x, mean, acc, n);
}

// y[j] = act(x[j] * a[j] + b[j])
template <typename T, bool kSilu>
MMATTN_INLINE void apply_vec_loop(const T* __restrict__ x, T* __restrict__ y, int64_t n,
                                  const T* __restrict__ a, const T* __restrict__ b) {
  for (int64_t j = 0; j < n; ++j) y[j] = act<T, kSilu>(x[j] * a[j] + b[j]);
}
template <typename T>
MMATTN_INLINE void apply_vec_impl(const T* x, T* y, int64_t n, const T* a, const T* b, bool silu) {
  silu ? apply_vec_loop<T, true>(x, y, n, a, b) : apply_vec_loop<T, false>(x, y, n, a, b);
}
MMATTN_CPU_CLONES void apply_vec(const float* x, float* y, int64_t n, const float* a,
                                 const float* b, bool silu) {
  apply_vec_impl(x, y, n, a, b, silu);
}
void apply_vec(const double* x, double* y, int64_t n, const double* a, const double* b, bool silu) {
  apply_vec_impl(x, y, n, a, b, silu);
}

// s1[j] += dz, s2[j] += dz * (x[j] - mean[j]) with dz = dL/dz of element j.
template <typename T, bool kSilu>
MMATTN_INLINE void grad_sums_loop(const T* __restrict__ x, const T* __restrict__ dy, int64_t n,
                                  const T* __restrict__ a, const T* __restrict__ b,
                                  const T* __restrict__ mean, T* __restrict__ s1,
                                  T* __restrict__ s2) {
  for (int64_t j = 0; j < n; ++j) {
    const T g = act_grad<T, kSilu>(x[j], dy[j], a[j], b[j]);
    s1[j] += g;
    s2[j] += g * (x[j] - mean[j]);
  }
}
template <typename T>
MMATTN_INLINE void grad_sums_impl(const T* x, const T* dy, int64_t n, const T* a, const T* b,
                                  const T* mean, T* s1, T* s2, bool silu) {
  silu ? grad_sums_loop<T, true>(x, dy, n, a, b, mean, s1, s2)
       : grad_sums_loop<T, false>(x, dy, n, a, b, mean, s1, s2);
}
MMATTN_CPU_CLONES void grad_sums_vec(const float* x, const float* dy, int64_t n, const float* a,
                                     const float* b, const float* mean, float* s1, float* s2,
                                     bool silu) {
  grad_sums_impl(x, dy, n, a, b, mean, s1, s2, silu);
}
void grad_sums_vec(const double* x, const double* dy, int64_t n, const double* a, const double* b,
                   const double* mean, double* s1, double* s2, bool silu) {
  grad_sums_impl(x, dy, n, a, b, mean, s1, s2, silu);
}

// dx[j] = k_dz[j] * dz + k_x[j] * (x[j] - mean[j]) + k_0[j], dz recomputed from x and dy.
template <typename T, bool kSilu>
MMATTN_INLINE void dx_vec_loop(const T* __restrict__ x, const T* __restrict__ dy,
                               T* __restrict__ dx, int64_t n, const T* __restrict__ a,
                               const T* __restrict__ b, const T* __restrict__ k_dz,
                               const T* __restrict__ k_x, const T* __restrict__ mean,
                               const T* __restrict__ k_0) {
  for (int64_t j = 0; j < n; ++j) {
    const T g = act_grad<T, kSilu>(x[j], dy[j], a[j], b[j]);
    dx[j] = k_dz[j] * g + k_x[j] * (x[j] - mean[j]) + k_0[j];
  }
}
template <typename T>
MMATTN_INLINE void dx_vec_impl(const T* x, const T* dy, T* dx, int64_t n, const T* a, const T* b,
                               const T* k_dz, const T* k_x, const T* mean, const T* k_0, bool silu) {
  silu ? dx_vec_loop<T, true>(x, dy, dx, n, a, b, k_dz, k_x, mean, k_0)
       : dx_vec_loop<T, false>(x, dy, dx, n, a, b, k_dz, k_x, mean, k_0);
}
MMATTN_CPU_CLONES void dx_vec(const float* x, const float* dy, float* dx, int64_t n, const float* a,
                              const float* b, const float* k_dz, const float* k_x,
                              const float* mean, const float* k_0, bool silu) {
  dx_vec_impl(x, dy, dx, n, a, b, k_dz, k_x, mean, k_0, silu);
}
void dx_vec(const double* x, const double* dy, double* dx, int64_t n, const double* a,
            const double* b, const double* k_dz, const double* k_x, const double* mean,
            const double* k_0, bool silu) {
  dx_vec_impl(x, dy, dx, n, a, b, k_dz, k_x, mean, k_0, silu);
}

// ---------------------------------------------------------------------------------------------
// Data access
// ---------------------------------------------------------------------------------------------

// A row in acc_t: points into the tensor when it is acc_t with unit step, else gathered
// (and converted) into `buf`.
template <typename scalar_t, typename acc_t>
const acc_t* read_row(const scalar_t* p, int64_t n, int64_t step, std::vector<acc_t>& buf) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (step == 1) return p;
  }
  buf.resize(n);
  for (int64_t j = 0; j < n; ++j) buf[j] = static_cast<acc_t>(p[j * step]);
  return buf.data();
}

// A row to write in acc_t: the tensor itself when it is acc_t with unit step, else `buf`,
// stored (and converted) by `commit`.
template <typename scalar_t, typename acc_t>
struct RowWriter {
  scalar_t* p;
  int64_t n, step;
  std::vector<acc_t>& buf;
  acc_t* data() {
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      if (step == 1) return p;
    }
    buf.resize(n);
    return buf.data();
  }
  void commit() const {
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      if (step == 1) return;
    }
    for (int64_t j = 0; j < n; ++j) p[j * step] = static_cast<scalar_t>(buf[j]);
  }
};

// Offset within a sample of planar row (f, c): one channel, S elements `ss` apart.
int64_t planar_row(const NormLayout& l, int64_t f, int64_t c) { return f * l.sf + c * l.sc; }
// Offset within a sample of channels-inner row r = f * S + s: C elements `sc` = 1 apart.
int64_t inner_row(const NormLayout& l, int64_t r) { return (r / l.spatial) * l.sf + (r % l.spatial) * l.ss; }

// C contiguous and S not: rows of all channels (frames-last video, channels_last). Where S is
// contiguous too (S = 1, or unit stride) the planar rows are as long, and the CPU keeps them;
// the CUDA kernels choose by their own rule (group_norm.cu).
bool channels_inner(const NormLayout& l) { return l.sc == 1 && l.ss != 1 && l.spatial > 1; }

// Per-channel vectors of the affine and FiLM parameters in acc_t (defaults where absent).
template <typename acc_t>
struct Affine {
  at::Tensor weight, bias, scale, shift;  // acc_t, contiguous; undefined when absent
  static at::Tensor prep(const OptTensor& t, at::ScalarType acc) {
    return t.has_value() && t->defined() ? t->to(acc).contiguous() : at::Tensor();
  }
  acc_t w(int64_t c) const { return weight.defined() ? weight.data_ptr<acc_t>()[c] : acc_t(1); }
  acc_t bi(int64_t c) const { return bias.defined() ? bias.data_ptr<acc_t>()[c] : acc_t(0); }
  // FiLM factor 1 + scale[b, c] and offset shift[b, c] for a [B, C] tensor
  acc_t k(int64_t b, int64_t c, int64_t C) const {
    return scale.defined() ? acc_t(1) + scale.data_ptr<acc_t>()[b * C + c] : acc_t(1);
  }
  acc_t sh(int64_t b, int64_t c, int64_t C) const {
    return shift.defined() ? shift.data_ptr<acc_t>()[b * C + c] : acc_t(0);
  }
};

template <typename acc_t>
Affine<acc_t> make_affine(const OptTensor& w, const OptTensor& b, const OptTensor& s,
                          const OptTensor& sh, at::ScalarType acc) {
  return {Affine<acc_t>::prep(w, acc), Affine<acc_t>::prep(b, acc), Affine<acc_t>::prep(s, acc),
          Affine<acc_t>::prep(sh, acc)};
}

// Per-(b, c) coefficients of one sample and group.
// Forward: z = x * a[c] + bc[c] folds normalisation, affine and FiLM.
template <typename acc_t>
void fold_coefficients(const Affine<acc_t>& af, int64_t b, int64_t g, int64_t cpg, int64_t C,
                       acc_t mean, acc_t rstd, acc_t* a, acc_t* bc) {
  for (int64_t c = g * cpg; c < (g + 1) * cpg; ++c) {
    const acc_t k = af.k(b, c, C);
    a[c] = rstd * af.w(c) * k;
    bc[c] = (af.bi(c) - mean * rstd * af.w(c)) * k + af.sh(b, c, C);
  }
}

// Backward, from s1[c] = sum dz and s2c[c] = sum dz * (x - mean) over the group's channels:
// dx = rstd * (dz * gain[c] - m1 - xhat * m2) with gain = w * (1 + scale), m1 and m2 the group
// means of gain * dz and gain * dz * xhat; as dx = k_dz[c] * dz + k_x * (x - mean) + k_0.
// Writes s2[c] = sum dz * xhat (parameter gradients) over s2c.
template <typename acc_t>
void dx_coefficients(const Affine<acc_t>& af, int64_t b, int64_t g, int64_t cpg, int64_t C,
                     int64_t count, acc_t mean, acc_t rstd, const acc_t* s1, acc_t* s2,
                     acc_t* k_dz, acc_t* k_x, acc_t* k_0) {
  acc_t m1 = 0, m2 = 0;
  for (int64_t c = g * cpg; c < (g + 1) * cpg; ++c) {
    s2[c] *= rstd;
    const acc_t gain = af.w(c) * af.k(b, c, C);
    k_dz[c] = rstd * gain;
    m1 += gain * s1[c];
    m2 += gain * s2[c];
  }
  m1 /= acc_t(count);
  m2 /= acc_t(count);
  for (int64_t c = g * cpg; c < (g + 1) * cpg; ++c) {
    k_x[c] = -rstd * rstd * m2;
    k_0[c] = -rstd * m1;
  }
}

// ---------------------------------------------------------------------------------------------
// Kernels
// ---------------------------------------------------------------------------------------------

// Problem-wide sizes; per-(b, c) coefficient arrays are [B, C] row-major.
struct Sizes {
  int64_t B, C, G, cpg, rows, count;  // rows per sample in the kernel's sense; count per group
};

// Planar forward: one task per (b, g), statistics and normalisation inside the task.
template <typename scalar_t, typename acc_t>
void forward_planar(const scalar_t* x, const NormLayout& l, scalar_t* y, const NormLayout& ly,
                    const Sizes& z, const Affine<acc_t>& af, bool silu, double eps,
                    acc_t* mean_out, acc_t* rstd_out) {
  std::vector<acc_t> a(z.B * z.C), bc(z.B * z.C);
  at::parallel_for(0, z.B * z.G, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf, out;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / z.G, g = task % z.G;
      auto row = [&](int64_t f, int64_t c) {  // row (f, c) of the group in acc_t
        return read_row(x + b * l.sb + planar_row(l, f, c), l.spatial, l.ss, buf);
      };
      acc_t sum = 0;
      for (int64_t f = 0; f < l.frames; ++f)
        for (int64_t c = g * z.cpg; c < (g + 1) * z.cpg; ++c) sum += row_sum(row(f, c), l.spatial);
      const acc_t mean = sum / acc_t(z.count);
      acc_t m2 = 0;
      for (int64_t f = 0; f < l.frames; ++f)
        for (int64_t c = g * z.cpg; c < (g + 1) * z.cpg; ++c) m2 += row_sq_dev(row(f, c), l.spatial, mean);
      const acc_t rstd = acc_t(1) / std::sqrt(m2 / acc_t(z.count) + acc_t(eps));
      mean_out[task] = mean;
      rstd_out[task] = rstd;
      acc_t* ab = a.data() + b * z.C;
      acc_t* bb = bc.data() + b * z.C;
      fold_coefficients(af, b, g, z.cpg, z.C, mean, rstd, ab, bb);
      for (int64_t f = 0; f < l.frames; ++f) {
        for (int64_t c = g * z.cpg; c < (g + 1) * z.cpg; ++c) {
          RowWriter<scalar_t, acc_t> w{y + b * ly.sb + planar_row(ly, f, c), l.spatial, ly.ss, out};
          apply_row(row(f, c), w.data(), l.spatial, ab[c], bb[c], silu);
          w.commit();
        }
      }
    }
  });
}

// Channels-inner forward: per-chunk per-channel moments, combined per group in float64; then
// a streaming normalisation pass.
template <typename scalar_t, typename acc_t>
void forward_inner(const scalar_t* x, const NormLayout& l, scalar_t* y, const NormLayout& ly,
                   const Sizes& z, const Affine<acc_t>& af, bool silu, double eps,
                   acc_t* mean_out, acc_t* rstd_out) {
  const int64_t C = z.C, R = std::max<int64_t>(1, kChunkElems / C);
  const int64_t chunks = (z.rows + R - 1) / R;
  std::vector<acc_t> a(z.B * C), bc(z.B * C);
  std::vector<acc_t> part_mean(z.B * chunks * C), part_m2(z.B * chunks * C, acc_t(0));
  at::parallel_for(0, z.B * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / chunks, r0 = (task % chunks) * R, r1 = std::min(z.rows, r0 + R);
      acc_t* mean = part_mean.data() + task * C;
      acc_t* m2 = part_m2.data() + task * C;
      std::fill(mean, mean + C, acc_t(0));
      for (int64_t r = r0; r < r1; ++r) add_row(read_row(x + b * l.sb + inner_row(l, r), C, 1, buf), mean, C);
      for (int64_t c = 0; c < C; ++c) mean[c] /= acc_t(r1 - r0);
      for (int64_t r = r0; r < r1; ++r)
        add_sq_dev_row(read_row(x + b * l.sb + inner_row(l, r), C, 1, buf), mean, m2, C);
    }
  });
  // Chan et al.: M2 = sum_k M2_k + n_k (mean_k - mean)^2 over the (chunk, channel) parts.
  for (int64_t b = 0; b < z.B; ++b) {
    for (int64_t g = 0; g < z.G; ++g) {
      double sum = 0, m2 = 0;
      for (int64_t k = 0; k < chunks; ++k) {
        const double n = double(std::min(z.rows, (k + 1) * R) - k * R);
        for (int64_t c = g * z.cpg; c < (g + 1) * z.cpg; ++c) sum += n * part_mean[(b * chunks + k) * C + c];
      }
      const double mean = sum / double(z.count);
      for (int64_t k = 0; k < chunks; ++k) {
        const double n = double(std::min(z.rows, (k + 1) * R) - k * R);
        for (int64_t c = g * z.cpg; c < (g + 1) * z.cpg; ++c) {
          const int64_t i = (b * chunks + k) * C + c;
          const double d = double(part_mean[i]) - mean;
          m2 += double(part_m2[i]) + n * d * d;
        }
      }
      const acc_t rstd = acc_t(1.0 / std::sqrt(m2 / double(z.count) + eps));
      mean_out[b * z.G + g] = acc_t(mean);
      rstd_out[b * z.G + g] = rstd;
      fold_coefficients(af, b, g, z.cpg, C, acc_t(mean), rstd, a.data() + b * C, bc.data() + b * C);
    }
  }
  at::parallel_for(0, z.B * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf, out;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / chunks, r0 = (task % chunks) * R, r1 = std::min(z.rows, r0 + R);
      for (int64_t r = r0; r < r1; ++r) {
        RowWriter<scalar_t, acc_t> w{y + b * ly.sb + inner_row(ly, r), C, 1, out};
        apply_vec(read_row(x + b * l.sb + inner_row(l, r), C, 1, buf), w.data(), C,
                  a.data() + b * C, bc.data() + b * C, silu);
        w.commit();
      }
    }
  });
}

// Backward coefficient arrays, [B, C] each.
template <typename acc_t>
struct BackwardCoefficients {
  std::vector<acc_t> a, bc, mean, k_dz, k_x, k_0;
  explicit BackwardCoefficients(int64_t n) : a(n), bc(n), mean(n), k_dz(n), k_x(n), k_0(n) {}
  // Forward folding and the per-channel group mean of sample b, group g.
  void fold(const Affine<acc_t>& af, const Sizes& z, int64_t b, int64_t g, acc_t mean_g, acc_t rstd) {
    fold_coefficients(af, b, g, z.cpg, z.C, mean_g, rstd, a.data() + b * z.C, bc.data() + b * z.C);
    std::fill(mean.begin() + b * z.C + g * z.cpg, mean.begin() + b * z.C + (g + 1) * z.cpg, mean_g);
  }
  void dx(const Affine<acc_t>& af, const Sizes& z, int64_t b, int64_t g, acc_t mean_g, acc_t rstd,
          const acc_t* s1, acc_t* s2) {
    dx_coefficients(af, b, g, z.cpg, z.C, z.count, mean_g, rstd, s1 + b * z.C, s2 + b * z.C,
                    k_dz.data() + b * z.C, k_x.data() + b * z.C, k_0.data() + b * z.C);
  }
};

// Planar backward: one task per (b, g): sums over the group, then dx (the second read of the
// group hits cache).
template <typename scalar_t, typename acc_t>
void backward_planar(const scalar_t* dy, const NormLayout& ld, const scalar_t* x,
                     const NormLayout& l, scalar_t* dx, const NormLayout& lx, const Sizes& z,
                     const Affine<acc_t>& af, bool silu, const acc_t* mean_in,
                     const acc_t* rstd_in, acc_t* s1, acc_t* s2) {
  BackwardCoefficients<acc_t> k(z.B * z.C);
  at::parallel_for(0, z.B * z.G, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> bufx, bufd, out;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / z.G, g = task % z.G;
      const acc_t mean = mean_in[task], rstd = rstd_in[task];
      k.fold(af, z, b, g, mean, rstd);
      auto xrow = [&](int64_t f, int64_t c) {
        return read_row(x + b * l.sb + planar_row(l, f, c), l.spatial, l.ss, bufx);
      };
      auto drow = [&](int64_t f, int64_t c) {
        return read_row(dy + b * ld.sb + planar_row(ld, f, c), l.spatial, ld.ss, bufd);
      };
      const int64_t o = b * z.C;
      for (int64_t c = g * z.cpg; c < (g + 1) * z.cpg; ++c) {
        s1[o + c] = s2[o + c] = 0;
        for (int64_t f = 0; f < l.frames; ++f)
          grad_row(xrow(f, c), drow(f, c), l.spatial, k.a[o + c], k.bc[o + c], mean, s1[o + c],
                   s2[o + c], silu);
      }
      k.dx(af, z, b, g, mean, rstd, s1, s2);
      for (int64_t f = 0; f < l.frames; ++f) {
        for (int64_t c = g * z.cpg; c < (g + 1) * z.cpg; ++c) {
          RowWriter<scalar_t, acc_t> w{dx + b * lx.sb + planar_row(lx, f, c), l.spatial, lx.ss, out};
          dx_row(xrow(f, c), drow(f, c), w.data(), l.spatial, k.a[o + c], k.bc[o + c], k.k_dz[o + c],
                 k.k_x[o + c], mean, k.k_0[o + c], silu);
          w.commit();
        }
      }
    }
  });
}

// Channels-inner backward: per-chunk per-channel sums, reduced in float64; then a streaming
// dx pass.
template <typename scalar_t, typename acc_t>
void backward_inner(const scalar_t* dy, const NormLayout& ld, const scalar_t* x,
                    const NormLayout& l, scalar_t* dx, const NormLayout& lx, const Sizes& z,
                    const Affine<acc_t>& af, bool silu, const acc_t* mean_in,
                    const acc_t* rstd_in, acc_t* s1, acc_t* s2) {
  const int64_t C = z.C, R = std::max<int64_t>(1, kChunkElems / C);
  const int64_t chunks = (z.rows + R - 1) / R;
  BackwardCoefficients<acc_t> k(z.B * C);
  for (int64_t b = 0; b < z.B; ++b)
    for (int64_t g = 0; g < z.G; ++g) k.fold(af, z, b, g, mean_in[b * z.G + g], rstd_in[b * z.G + g]);
  std::vector<acc_t> part1(z.B * chunks * C, acc_t(0)), part2(z.B * chunks * C, acc_t(0));
  at::parallel_for(0, z.B * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> bufx, bufd;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / chunks, r0 = (task % chunks) * R, r1 = std::min(z.rows, r0 + R);
      const int64_t o = b * C;
      for (int64_t r = r0; r < r1; ++r)
        grad_sums_vec(read_row(x + b * l.sb + inner_row(l, r), C, 1, bufx),
                      read_row(dy + b * ld.sb + inner_row(ld, r), C, 1, bufd), C, k.a.data() + o,
                      k.bc.data() + o, k.mean.data() + o, part1.data() + task * C,
                      part2.data() + task * C, silu);
    }
  });
  for (int64_t b = 0; b < z.B; ++b) {
    for (int64_t c = 0; c < C; ++c) {
      double t1 = 0, t2 = 0;
      for (int64_t kk = 0; kk < chunks; ++kk) {
        t1 += part1[(b * chunks + kk) * C + c];
        t2 += part2[(b * chunks + kk) * C + c];
      }
      s1[b * C + c] = acc_t(t1);
      s2[b * C + c] = acc_t(t2);
    }
    for (int64_t g = 0; g < z.G; ++g) k.dx(af, z, b, g, mean_in[b * z.G + g], rstd_in[b * z.G + g], s1, s2);
  }
  at::parallel_for(0, z.B * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> bufx, bufd, out;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / chunks, r0 = (task % chunks) * R, r1 = std::min(z.rows, r0 + R);
      const int64_t o = b * C;
      for (int64_t r = r0; r < r1; ++r) {
        RowWriter<scalar_t, acc_t> w{dx + b * lx.sb + inner_row(lx, r), C, 1, out};
        dx_vec(read_row(x + b * l.sb + inner_row(l, r), C, 1, bufx),
               read_row(dy + b * ld.sb + inner_row(ld, r), C, 1, bufd), w.data(), C,
               k.a.data() + o, k.bc.data() + o, k.k_dz.data() + o, k.k_x.data() + o,
               k.mean.data() + o, k.k_0.data() + o, silu);
        w.commit();
      }
    }
  });
}

Sizes sizes_of(const NormLayout& l, int64_t G) {
  const int64_t cpg = l.channels / G;
  return {l.batch, l.channels, G, cpg, l.frames * l.spatial, l.frames * cpg * l.spatial};
}

template <typename F>
void dispatch(at::ScalarType t, F&& f) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, t, "group_norm_act_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    f(scalar_t(0), acc_t(0));
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_act_fwd_cpu(
    const at::Tensor& x_in, int64_t G, const OptTensor& weight, const OptTensor& bias,
    const OptTensor& scale, const OptTensor& shift, bool silu, double eps, int64_t channel_dim) {
  check_group_norm("group_norm_act_fwd", x_in, G, channel_dim, weight, bias, scale, shift);
  const at::Tensor x = flattenable(x_in, channel_dim);
  at::Tensor y_result = empty_like_cached(x_in);  // the strides the fake kernel promises
  at::Tensor y = x.is_same(x_in) ? y_result : empty_like_cached(x);  // x's strides
  const at::ScalarType acc = stats_dtype(x.scalar_type());
  at::Tensor mean = at::empty({x.size(0), G}, x.options().dtype(acc));
  at::Tensor rstd = at::empty({x.size(0), G}, x.options().dtype(acc));
  if (x.numel() == 0) return {y_result, mean.zero_(), rstd.zero_()};
  const NormLayout l = *layout_of(x, channel_dim), ly = *layout_of(y, channel_dim);
  dispatch(x.scalar_type(), [&](auto s, auto a) {
    using scalar_t = decltype(s);
    using acc_t = decltype(a);
    const Affine<acc_t> af = make_affine<acc_t>(weight, bias, scale, shift, acc);
    auto kernel = channels_inner(l) ? forward_inner<scalar_t, acc_t> : forward_planar<scalar_t, acc_t>;
    kernel(x.data_ptr<scalar_t>(), l, y.data_ptr<scalar_t>(), ly, sizes_of(l, G), af, silu, eps,
           mean.data_ptr<acc_t>(), rstd.data_ptr<acc_t>());
  });
  if (!y.is_same(y_result)) y_result.copy_(y);
  return {y_result, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> group_norm_act_bwd_cpu(
    const at::Tensor& dy_in, const at::Tensor& x_in, const at::Tensor& mean,
    const at::Tensor& rstd, int64_t G, const OptTensor& weight, const OptTensor& bias,
    const OptTensor& scale, const OptTensor& shift, bool silu, int64_t channel_dim) {
  check_group_norm("group_norm_act_bwd", x_in, G, channel_dim, weight, bias, scale, shift);
  check_group_norm_grads("group_norm_act_bwd", dy_in, x_in, mean, rstd, G);
  const at::Tensor x = flattenable(x_in, channel_dim);
  at::Tensor dy = flattenable(dy_in, channel_dim);
  const NormLayout l = *layout_of(x, channel_dim);
  if (channels_inner(*layout_of(dy, channel_dim)) != channels_inner(l)) {
    dy = empty_like_cached(x).copy_(dy);  // rows must run the same way in x and grad_y
  }
  const NormLayout ld = *layout_of(dy, channel_dim);
  const at::ScalarType acc = stats_dtype(x.scalar_type());
  const int64_t B = x.size(0), C = x.size(channel_dim);
  at::Tensor dx_result = empty_like_cached(x_in);  // the strides the fake kernel promises
  at::Tensor dx = x.is_same(x_in) ? dx_result : empty_like_cached(x);  // x's strides
  at::Tensor s1 = at::zeros({B, C}, x.options().dtype(acc));
  at::Tensor s2 = at::zeros({B, C}, x.options().dtype(acc));
  if (x.numel() > 0) {
    const NormLayout lx = *layout_of(dx, channel_dim);
    dispatch(x.scalar_type(), [&](auto s, auto a) {
      using scalar_t = decltype(s);
      using acc_t = decltype(a);
      const Affine<acc_t> af = make_affine<acc_t>(weight, bias, scale, shift, acc);
      auto kernel = channels_inner(l) ? backward_inner<scalar_t, acc_t> : backward_planar<scalar_t, acc_t>;
      kernel(dy.data_ptr<scalar_t>(), ld, x.data_ptr<scalar_t>(), l, dx.data_ptr<scalar_t>(), lx,
             sizes_of(l, G), af, silu, mean.contiguous().data_ptr<acc_t>(),
             rstd.contiguous().data_ptr<acc_t>(), s1.data_ptr<acc_t>(), s2.data_ptr<acc_t>());
    });
  }
  // Parameter gradients from the per-(b, c) sums s1 = sum dz, s2 = sum dz * xhat.
  auto opt_or = [&](const OptTensor& t) { return t.has_value() && t->defined(); };
  const at::Tensor w = opt_or(weight) ? weight->to(acc) : at::ones({C}, s1.options());
  const at::Tensor bi = opt_or(bias) ? bias->to(acc) : at::zeros({C}, s1.options());
  const at::Tensor k = opt_or(scale) ? scale->to(acc) + 1 : at::ones({B, C}, s1.options());
  const at::ScalarType wt = opt_or(weight) ? weight->scalar_type() : x.scalar_type();
  const at::ScalarType bt = opt_or(bias) ? bias->scalar_type() : x.scalar_type();
  const at::ScalarType st = opt_or(scale) ? scale->scalar_type() : x.scalar_type();
  const at::ScalarType sht = opt_or(shift) ? shift->scalar_type() : x.scalar_type();
  at::Tensor dweight = (k * s2).sum(0).to(wt);
  at::Tensor dbias = (k * s1).sum(0).to(bt);
  at::Tensor dscale = (w * s2 + bi * s1).to(st);
  at::Tensor dshift = s1.to(sht);
  if (!dx.is_same(dx_result)) dx_result.copy_(dx);
  return {dx_result, dweight, dbias, dscale, dshift};
}

}  // namespace mmattn
