// CPU GroupNorm + affine + FiLM + SiLU, forward and backward, fused.
//
// x is viewed as [B, F, C, S] with its own strides (F = 1 for channel_dim 1; S flattens the
// spatial dims), so [B, F, C, H, W] video and channels_last inputs need no permute copy. One
// task per (sample, group): the group's elements are read once from memory for the
// statistics (mean, then centred sum of squares: the second read hits cache) and once more
// to normalise, all inside the task.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <vector>

#include "norm_layout.h"
#include "ops.h"
#include "vec_math.h"

namespace mmattn {
namespace {

// Rows of one (b, g) group: `rows` rows of `len` elements, row r at offset row_off(r),
// elements `step` apart; channel of (row, j) via `chan(r, j)`.
struct GroupRows {
  int64_t rows, len, step;
  bool inner_is_s;  // rows run along S (one channel per row) or along C (one channel per element)
  int64_t cpg, frames, spatial;
  int64_t sf, sc, ss;
  // offset of row r relative to the group's first element
  int64_t row_off(int64_t r) const {
    if (inner_is_s) {  // r = f * cpg + c
      return (r / cpg) * sf + (r % cpg) * sc;
    }
    return (r / spatial) * sf + (r % spatial) * ss;  // r = f * spatial + s
  }
};

GroupRows group_rows(const NormLayout& l, int64_t cpg) {
  const bool inner_s = std::abs(l.ss) <= std::abs(l.sc) || cpg == 1;
  GroupRows g{};
  g.inner_is_s = inner_s;
  g.rows = inner_s ? l.frames * cpg : l.frames * l.spatial;
  g.len = inner_s ? l.spatial : cpg;
  g.step = inner_s ? l.ss : l.sc;
  g.cpg = cpg;
  g.frames = l.frames;
  g.spatial = l.spatial;
  g.sf = l.sf;
  g.sc = l.sc;
  g.ss = l.ss;
  return g;
}

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

// y[j] = act(x[j] * a[j * ca] + b[j * ca]): ca = 0 (one channel per row) or 1. The two
// cases are separate loops: a runtime stride would keep the compiler from vectorising.
template <typename T, bool kSilu>
MMATTN_INLINE void apply_loop(const T* x, T* y, int64_t n, const T* a, const T* b, int64_t ca) {
  auto act = [](T z) { return kSilu ? z * cpu::sigmoid_(z) : z; };
  if (ca == 0) {
    const T a0 = a[0], b0 = b[0];
    for (int64_t j = 0; j < n; ++j) y[j] = act(x[j] * a0 + b0);
  } else {
    for (int64_t j = 0; j < n; ++j) y[j] = act(x[j] * a[j] + b[j]);
  }
}
template <typename T>
MMATTN_INLINE void apply_row_impl(const T* x, T* y, int64_t n, const T* a, const T* b,
                                  int64_t ca, bool silu) {
  silu ? apply_loop<T, true>(x, y, n, a, b, ca) : apply_loop<T, false>(x, y, n, a, b, ca);
}
MMATTN_CPU_CLONES void apply_row(const float* x, float* y, int64_t n, const float* a,
                                 const float* b, int64_t ca, bool silu) {
  apply_row_impl(x, y, n, a, b, ca, silu);
}
void apply_row(const double* x, double* y, int64_t n, const double* a, const double* b,
               int64_t ca, bool silu) {
  apply_row_impl(x, y, n, a, b, ca, silu);
}

// Backward pass 1 over a row: dz = dy * act'(z) into `dz`; s1[c] += dz, s2[c] += dz * xhat
// with xhat = (x - mean) * rstd; per-element channel when ca = 1.
template <typename T, bool kSilu>
MMATTN_INLINE T act_grad(T x, T dy, T a, T b) {
  if (!kSilu) return dy;
  const T z = x * a + b;
  const T sg = cpu::sigmoid_(z);
  return dy * sg * (T(1) + z * (T(1) - sg));
}
template <typename T, bool kSilu>
MMATTN_INLINE void grad_loop(const T* x, const T* dy, T* dz, int64_t n, const T* a, const T* b,
                             int64_t ca, T mean, T rstd, T* s1, T* s2) {
  if (ca == 0) {
    const T a0 = a[0], b0 = b[0];
    T acc1 = 0, acc2 = 0;
    MMATTN_SIMD_REDUCE(+ : acc1, acc2)
    for (int64_t j = 0; j < n; ++j) {
      const T g = act_grad<T, kSilu>(x[j], dy[j], a0, b0);
      dz[j] = g;
      acc1 += g;
      acc2 += g * (x[j] - mean);
    }
    s1[0] += acc1;
    s2[0] += acc2 * rstd;
  } else {
    for (int64_t j = 0; j < n; ++j) {
      const T g = act_grad<T, kSilu>(x[j], dy[j], a[j], b[j]);
      dz[j] = g;
      s1[j] += g;
      s2[j] += g * (x[j] - mean) * rstd;
    }
  }
}
template <typename T>
MMATTN_INLINE void grad_row_impl(const T* x, const T* dy, T* dz, int64_t n, const T* a,
                                 const T* b, int64_t ca, bool silu, T mean, T rstd, T* s1, T* s2) {
  silu ? grad_loop<T, true>(x, dy, dz, n, a, b, ca, mean, rstd, s1, s2)
       : grad_loop<T, false>(x, dy, dz, n, a, b, ca, mean, rstd, s1, s2);
}
MMATTN_CPU_CLONES void grad_row(const float* x, const float* dy, float* dz, int64_t n,
                                const float* a, const float* b, int64_t ca, bool silu,
                                float mean, float rstd, float* s1, float* s2) {
  grad_row_impl(x, dy, dz, n, a, b, ca, silu, mean, rstd, s1, s2);
}
void grad_row(const double* x, const double* dy, double* dz, int64_t n, const double* a,
              const double* b, int64_t ca, bool silu, double mean, double rstd, double* s1,
              double* s2) {
  grad_row_impl(x, dy, dz, n, a, b, ca, silu, mean, rstd, s1, s2);
}

// dx[j] = rstd * (dz[j] * g[j * ca] - m1 - (x[j] - mean) * rstd * m2).
template <typename T>
MMATTN_INLINE void dx_row_impl(const T* x, const T* dz, T* dx, int64_t n, const T* g, int64_t ca,
                               T mean, T rstd, T m1, T m2) {
  if (ca == 0) {
    const T g0 = g[0];
    for (int64_t j = 0; j < n; ++j) dx[j] = rstd * (dz[j] * g0 - m1 - (x[j] - mean) * rstd * m2);
  } else {
    for (int64_t j = 0; j < n; ++j) dx[j] = rstd * (dz[j] * g[j] - m1 - (x[j] - mean) * rstd * m2);
  }
}
MMATTN_CPU_CLONES void dx_row(const float* x, const float* dz, float* dx, int64_t n,
                              const float* g, int64_t ca, float mean, float rstd, float m1,
                              float m2) {
  dx_row_impl(x, dz, dx, n, g, ca, mean, rstd, m1, m2);
}
void dx_row(const double* x, const double* dz, double* dx, int64_t n, const double* g,
            int64_t ca, double mean, double rstd, double m1, double m2) {
  dx_row_impl(x, dz, dx, n, g, ca, mean, rstd, m1, m2);
}

// A row of a group in acc_t: points into the tensor when it is already acc_t with unit
// step, otherwise gathered into `buf`.
template <typename scalar_t, typename acc_t>
const acc_t* read_row(const scalar_t* p, int64_t n, int64_t step, std::vector<acc_t>& buf) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (step == 1) return p;
  }
  buf.resize(n);
  for (int64_t j = 0; j < n; ++j) buf[j] = static_cast<acc_t>(p[j * step]);
  return buf.data();
}

template <typename scalar_t, typename acc_t>
void write_row(const acc_t* src, scalar_t* p, int64_t n, int64_t step) {
  for (int64_t j = 0; j < n; ++j) p[j * step] = static_cast<scalar_t>(src[j]);
}

// Per-channel vectors of one sample in acc_t (defaults where the tensor is absent).
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

// z = x * a[c] + b[c] folds normalisation, affine and FiLM for sample `b`, channels of group `g`.
template <typename acc_t>
void fold_coefficients(const Affine<acc_t>& af, int64_t b, int64_t g, int64_t cpg, int64_t C,
                       acc_t mean, acc_t rstd, acc_t* a, acc_t* bc) {
  for (int64_t j = 0; j < cpg; ++j) {
    const int64_t c = g * cpg + j;
    const acc_t k = af.k(b, c, C);
    a[j] = rstd * af.w(c) * k;
    bc[j] = (af.bi(c) - mean * rstd * af.w(c)) * k + af.sh(b, c, C);
  }
}

template <typename scalar_t, typename acc_t>
void forward_kernel(const at::Tensor& x, const NormLayout& l, at::Tensor& y, const NormLayout& ly,
                    int64_t G, const Affine<acc_t>& af, bool silu, double eps, acc_t* mean_out,
                    acc_t* rstd_out) {
  const int64_t C = l.channels, cpg = C / G;
  const GroupRows gr = group_rows(l, cpg), gy = group_rows(ly, cpg);
  const int64_t count = l.frames * cpg * l.spatial;
  at::parallel_for(0, l.batch * G, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf, out, a(cpg), bc(cpg);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / G, g = task % G;
      const scalar_t* xg = x.data_ptr<scalar_t>() + b * l.sb + g * cpg * l.sc;
      scalar_t* yg = y.data_ptr<scalar_t>() + b * ly.sb + g * cpg * ly.sc;
      acc_t sum = 0;
      for (int64_t r = 0; r < gr.rows; ++r)
        sum += row_sum(read_row(xg + gr.row_off(r), gr.len, gr.step, buf), gr.len);
      const acc_t mean = sum / acc_t(count);
      acc_t m2 = 0;
      for (int64_t r = 0; r < gr.rows; ++r)
        m2 += row_sq_dev(read_row(xg + gr.row_off(r), gr.len, gr.step, buf), gr.len, mean);
      const acc_t rstd = acc_t(1) / std::sqrt(m2 / acc_t(count) + acc_t(eps));
      mean_out[task] = mean;
      rstd_out[task] = rstd;
      fold_coefficients(af, b, g, cpg, C, mean, rstd, a.data(), bc.data());
      out.resize(gr.len);
      for (int64_t r = 0; r < gr.rows; ++r) {
        const acc_t* xr = read_row(xg + gr.row_off(r), gr.len, gr.step, buf);
        const int64_t c0 = gr.inner_is_s ? r % cpg : 0;
        apply_row(xr, out.data(), gr.len, a.data() + c0, bc.data() + c0, gr.inner_is_s ? 0 : 1, silu);
        write_row(out.data(), yg + gy.row_off(r), gr.len, gy.step);
      }
    }
  });
}

template <typename scalar_t, typename acc_t>
void backward_kernel(const at::Tensor& dy, const NormLayout& ld, const at::Tensor& x, const NormLayout& l,
                     at::Tensor& dx, const NormLayout& lx, int64_t G, const Affine<acc_t>& af,
                     bool silu, const acc_t* mean_in, const acc_t* rstd_in, acc_t* s1_out,
                     acc_t* s2_out) {
  const int64_t C = l.channels, cpg = C / G;
  const GroupRows gr = group_rows(l, cpg), gd = group_rows(ld, cpg), gx = group_rows(lx, cpg);
  const int64_t count = l.frames * cpg * l.spatial;
  at::parallel_for(0, l.batch * G, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> bufx, bufd, dz, out, a(cpg), bc(cpg), gain(cpg), s1(cpg), s2(cpg);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / G, g = task % G;
      const acc_t mean = mean_in[task], rstd = rstd_in[task];
      const scalar_t* xg = x.data_ptr<scalar_t>() + b * l.sb + g * cpg * l.sc;
      const scalar_t* dg = dy.data_ptr<scalar_t>() + b * ld.sb + g * cpg * ld.sc;
      scalar_t* dxg = dx.data_ptr<scalar_t>() + b * lx.sb + g * cpg * lx.sc;
      fold_coefficients(af, b, g, cpg, C, mean, rstd, a.data(), bc.data());
      std::fill(s1.begin(), s1.end(), acc_t(0));
      std::fill(s2.begin(), s2.end(), acc_t(0));
      dz.resize(gr.rows * gr.len);  // dL/dz of the whole group, reused by the second pass
      const int64_t ca = gr.inner_is_s ? 0 : 1;
      for (int64_t r = 0; r < gr.rows; ++r) {
        const int64_t c0 = gr.inner_is_s ? r % cpg : 0;
        grad_row(read_row(xg + gr.row_off(r), gr.len, gr.step, bufx),
                 read_row(dg + gd.row_off(r), gr.len, gd.step, bufd), dz.data() + r * gr.len,
                 gr.len, a.data() + c0, bc.data() + c0, ca, silu, mean, rstd, s1.data() + c0,
                 s2.data() + c0);
      }
      // dxhat = dz * gain[c] with gain = w * (1 + scale); m1, m2: group means of dxhat, dxhat * xhat
      acc_t m1 = 0, m2 = 0;
      for (int64_t j = 0; j < cpg; ++j) {
        const int64_t c = g * cpg + j;
        gain[j] = af.w(c) * af.k(b, c, C);
        m1 += gain[j] * s1[j];
        m2 += gain[j] * s2[j];
        s1_out[b * C + c] = s1[j];
        s2_out[b * C + c] = s2[j];
      }
      m1 /= acc_t(count);
      m2 /= acc_t(count);
      out.resize(gr.len);
      for (int64_t r = 0; r < gr.rows; ++r) {
        const int64_t c0 = gr.inner_is_s ? r % cpg : 0;
        dx_row(read_row(xg + gr.row_off(r), gr.len, gr.step, bufx), dz.data() + r * gr.len,
               out.data(), gr.len, gain.data() + c0, ca, mean, rstd, m1, m2);
        write_row(out.data(), dxg + gx.row_off(r), gr.len, gx.step);
      }
    }
  });
}

void check_args(const at::Tensor& x, int64_t G, int64_t channel_dim) {
  TORCH_CHECK(channel_dim == 1 || channel_dim == 2, "group_norm_act: channel_dim must be 1 or 2");
  TORCH_CHECK(x.dim() >= channel_dim + 1, "group_norm_act: x has too few dims");
  TORCH_CHECK(G >= 1 && x.size(channel_dim) % G == 0,
              "group_norm_act: channels must be divisible by num_groups");
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
  check_args(x_in, G, channel_dim);
  const at::Tensor x = flattenable(x_in, channel_dim);
  at::Tensor y_result = at::empty_like(x_in);  // the strides the fake kernel promises
  at::Tensor y = x.is_same(x_in) ? y_result : at::empty_like(x);
  const at::ScalarType acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor mean = at::empty({x.size(0), G}, x.options().dtype(acc));
  at::Tensor rstd = at::empty({x.size(0), G}, x.options().dtype(acc));
  if (x.numel() == 0) return {y_result, mean.zero_(), rstd.zero_()};
  dispatch(x.scalar_type(), [&](auto s, auto a) {
    using scalar_t = decltype(s);
    using acc_t = decltype(a);
    const Affine<acc_t> af = make_affine<acc_t>(weight, bias, scale, shift, acc);
    forward_kernel<scalar_t, acc_t>(x, *layout_of(x, channel_dim), y, *layout_of(y, channel_dim),
                                    G, af, silu, eps, mean.data_ptr<acc_t>(), rstd.data_ptr<acc_t>());
  });
  if (!y.is_same(y_result)) y_result.copy_(y);
  return {y_result, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> group_norm_act_bwd_cpu(
    const at::Tensor& dy_in, const at::Tensor& x_in, const at::Tensor& mean,
    const at::Tensor& rstd, int64_t G, const OptTensor& weight, const OptTensor& bias,
    const OptTensor& scale, const OptTensor& shift, bool silu, int64_t channel_dim) {
  check_args(x_in, G, channel_dim);
  at::Tensor x = flattenable(x_in, channel_dim);
  at::Tensor dy = flattenable(dy_in, channel_dim);
  const at::ScalarType acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t B = x.size(0), C = x.size(channel_dim);
  if (group_rows(*layout_of(x, channel_dim), C / G).inner_is_s !=
      group_rows(*layout_of(dy, channel_dim), C / G).inner_is_s) {
    x = x.contiguous();  // rows must run the same way in x and grad_y
    dy = dy.contiguous();
  }
  at::Tensor dx_result = at::empty_like(x_in);  // the strides the fake kernel promises
  at::Tensor dx = x.is_same(x_in) ? dx_result : at::empty_like(x);
  at::Tensor s1 = at::zeros({B, C}, x.options().dtype(acc));
  at::Tensor s2 = at::zeros({B, C}, x.options().dtype(acc));
  if (x.numel() > 0) {
    dispatch(x.scalar_type(), [&](auto s, auto a) {
      using scalar_t = decltype(s);
      using acc_t = decltype(a);
      const Affine<acc_t> af = make_affine<acc_t>(weight, bias, scale, shift, acc);
      backward_kernel<scalar_t, acc_t>(dy, *layout_of(dy, channel_dim), x, *layout_of(x, channel_dim),
                                       dx, *layout_of(dx, channel_dim), G, af, silu,
                                       mean.contiguous().data_ptr<acc_t>(),
                                       rstd.contiguous().data_ptr<acc_t>(), s1.data_ptr<acc_t>(),
                                       s2.data_ptr<acc_t>());
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
