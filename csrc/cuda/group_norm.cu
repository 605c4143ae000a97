// CUDA GroupNorm + affine + FiLM + SiLU, forward and backward.
//
// x is viewed as [B, F, C, S] with its own strides (F = 1 for channel_dim 1), so video in
// [B, F, C, H, W] and channels_last inputs need no permute copy. Two kernel families: planar
// (below) for layouts with contiguous spatial rows, and channels-innermost (further down) for
// unit channel stride (frames-last video, channels_last). Planar: the unit of work is one
// (sample, channel) pair - F planes of S elements - cut into `nsplit` equal parts, so the
// grid fills the GPU even when B * G is small:
//  forward:  stats kernel (Welford partials per part) -> apply kernel (each block merges its
//            group's cpg * nsplit partials in a fixed order, then normalises its part);
//  backward: sums kernel (per part: sum dz, sum dz (x - mean)) -> dx kernel (merges the
//            group's partial sums in a fixed order) -> parameter-gradient kernel.
// Every reduction has a fixed order, so results are bitwise reproducible. Groups are
// processed in waves of about half the L2 cache, so the second read of x (and grad_y) hits L2.
// Rows with unit S stride and 16-byte alignment use 16-byte vector accesses.
#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>  // C10_HOST_DEVICE, used by IntegerDivider.cuh
#include <ATen/cuda/detail/IntegerDivider.cuh>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <optional>

#include "checks.h"
#include "device_utils.cuh"
#include "norm_layout.h"
#include "norm_tiling.h"
#include "ops.h"

namespace mmattn {
namespace cuda {
namespace {

using at::cuda::detail::IntDivider;

constexpr int kThreads = 256, kWarps = kThreads / 32, kUnroll = 4;

// Work geometry shared by all kernels (x, y, grad_y and grad_x share these strides).
struct GnGeom {
  int64_t sb, sf, sc, ss;      // element strides of the [B, F, C, S] view
  int channels, groups, cpg;   // C, G, C / G
  int nsplit;                  // parts per (sample, channel)
  int vecs;                    // vectors per (sample, channel): F * S / V
  IntDivider<unsigned int> plane;  // vectors per (frame, channel) plane: S / V

  __device__ __forceinline__ int split_begin(int split) const {
    return static_cast<int>(int64_t{split} * vecs / nsplit);
  }
  // element offset of vector e of a (sample, channel) pair
  template <int V>
  __device__ __forceinline__ int64_t offset(int e) const {
    const auto dm = plane.divmod(static_cast<unsigned int>(e));
    return dm.div * sf + static_cast<int64_t>(dm.mod) * V * ss;
  }
};

// Per-channel parameters in the accumulation type (nullptr when absent).
template <typename acc_t>
struct Affine {
  const acc_t* weight;  // [C]
  const acc_t* bias;    // [C]
  const acc_t* scale;   // [B, C]
  const acc_t* shift;   // [B, C]
  __device__ __forceinline__ acc_t w(int c) const { return weight ? weight[c] : acc_t(1); }
  __device__ __forceinline__ acc_t bi(int c) const { return bias ? bias[c] : acc_t(0); }
  __device__ __forceinline__ acc_t film(int64_t bc) const { return scale ? acc_t(1) + scale[bc] : acc_t(1); }
  __device__ __forceinline__ acc_t sh(int64_t bc) const { return shift ? shift[bc] : acc_t(0); }
  // z = x * a + b folds normalisation, affine and FiLM (as the CPU kernel's fold_coefficients)
  __device__ __forceinline__ void fold(int64_t b, int c, int channels, acc_t mean, acc_t rstd,
                                       acc_t& a, acc_t& bb) const {
    const int64_t bc = b * channels + c;
    const acc_t k = film(bc);
    a = rstd * w(c) * k;
    bb = (bi(c) - mean * rstd * w(c)) * k + sh(bc);
  }
};

template <typename acc_t>
__device__ __forceinline__ acc_t sigmoid(acc_t z) {
  return acc_t(1) / (acc_t(1) + exp_acc(-z));
}

// Mean and centred sum of squares of n values.
template <typename acc_t>
struct Welford {
  acc_t n, mean, m2;
};

// a then b; written so that lanes merging the same pair in the same order agree bitwise.
template <typename acc_t>
__device__ __forceinline__ Welford<acc_t> merge(const Welford<acc_t>& a, const Welford<acc_t>& b) {
  if (b.n == acc_t(0)) return a;
  if (a.n == acc_t(0)) return b;
  const acc_t n = a.n + b.n, wb = b.n / n, delta = b.mean - a.mean;
  return {n, a.mean + delta * wb, a.m2 + b.m2 + delta * delta * a.n * wb};
}

template <typename acc_t, int V>
__device__ __forceinline__ Welford<acc_t> welford_of(const acc_t (&x)[V]) {
  acc_t s = 0;
#pragma unroll
  for (int i = 0; i < V; ++i) s += x[i];
  const acc_t mean = s / acc_t(V);
  acc_t m2 = 0;
#pragma unroll
  for (int i = 0; i < V; ++i) m2 += (x[i] - mean) * (x[i] - mean);
  return {acc_t(V), mean, m2};
}

// Tree merge over the warp, lower lanes first at every level: all lanes end with one value.
template <typename acc_t>
__device__ __forceinline__ Welford<acc_t> warp_merge(Welford<acc_t> w) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const Welford<acc_t> other{__shfl_xor_sync(kFullMask, w.n, o),
                               __shfl_xor_sync(kFullMask, w.mean, o),
                               __shfl_xor_sync(kFullMask, w.m2, o)};
    w = (lane & o) ? merge(other, w) : merge(w, other);
  }
  return w;
}

// Block-wide merge in warp order; the result is valid in warp 0.
template <typename acc_t>
__device__ __forceinline__ Welford<acc_t> block_merge(Welford<acc_t> w) {
  __shared__ acc_t sh[3][kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  w = warp_merge(w);
  if (lane == 0) {
    sh[0][warp] = w.n;
    sh[1][warp] = w.mean;
    sh[2][warp] = w.m2;
  }
  __syncthreads();
  if (warp == 0) {
    w = lane < kWarps ? Welford<acc_t>{sh[0][lane], sh[1][lane], sh[2][lane]}
                      : Welford<acc_t>{0, 0, 0};
    w = warp_merge(w);
  }
  return w;
}

// Block-wide sums of two values in warp order; valid in thread 0.
template <typename acc_t>
__device__ __forceinline__ void block_sum2(acc_t& a, acc_t& b) {
  __shared__ acc_t sh[2][kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  a = warp_sum(a);
  b = warp_sum(b);
  if (lane == 0) {
    sh[0][warp] = a;
    sh[1][warp] = b;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    a = 0;
    b = 0;
    for (int i = 0; i < kWarps; ++i) {
      a += sh[0][i];
      b += sh[1][i];
    }
  }
}

// The (sample, channel, part) of a block; `unit0` is the first unit of the wave.
struct Unit {
  int64_t index, b;
  int c, split;
  __device__ __forceinline__ Unit(const GnGeom& geo, int64_t unit0) {
    index = unit0 + blockIdx.x;
    const int64_t bc = index / geo.nsplit;
    split = static_cast<int>(index % geo.nsplit);
    b = bc / geo.channels;
    c = static_cast<int>(bc % geo.channels);
  }
  // first partial of this unit's group: parts of channels g*cpg .. g*cpg+cpg-1 are contiguous
  __device__ __forceinline__ int64_t group_partials(const GnGeom& geo) const {
    return (b * geo.channels + (c / geo.cpg) * geo.cpg) * geo.nsplit;
  }
};

// Applies f(e, values) to every vector e of this unit's part, kUnroll loads in flight.
template <typename scalar_t, int V, typename acc_t, typename F>
__device__ __forceinline__ void for_each_vec(const GnGeom& geo, const scalar_t* base, int e0,
                                             int e1, F&& f) {
  for (int e = e0 + static_cast<int>(threadIdx.x); e < e1; e += kThreads * kUnroll) {
    acc_t v[kUnroll][V];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int eu = e + u * kThreads;
      if (eu < e1) load_vec<scalar_t, V>(base + geo.offset<V>(eu), v[u]);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int eu = e + u * kThreads;
      if (eu < e1) f(eu, v[u]);
    }
  }
}

// ---- forward --------------------------------------------------------------------------------

template <typename scalar_t, typename acc_t, int V>
__global__ void __launch_bounds__(kThreads) gn_stats_kernel(const scalar_t* __restrict__ x,
                                                            const GnGeom geo, int64_t unit0,
                                                            acc_t* __restrict__ partial) {
  const Unit u(geo, unit0);
  const scalar_t* base = x + u.b * geo.sb + u.c * geo.sc;
  Welford<acc_t> w{0, 0, 0};
  for_each_vec<scalar_t, V, acc_t>(geo, base, geo.split_begin(u.split), geo.split_begin(u.split + 1),
                                   [&](int, const acc_t(&v)[V]) { w = merge(w, welford_of<acc_t, V>(v)); });
  w = block_merge(w);
  if (threadIdx.x == 0) {
    partial[2 * u.index] = w.mean;
    partial[2 * u.index + 1] = w.m2;
  }
}

template <typename scalar_t, typename acc_t, int V>
__global__ void __launch_bounds__(kThreads) gn_apply_kernel(
    const scalar_t* __restrict__ x, scalar_t* __restrict__ y, const GnGeom geo,
    const Affine<acc_t> af, int64_t unit0, const acc_t* __restrict__ partial,
    acc_t* __restrict__ mean_out, acc_t* __restrict__ rstd_out, acc_t eps, bool silu) {
  const Unit u(geo, unit0);
  const int lane = threadIdx.x % 32;
  // The group's statistics: every warp merges the same partials in the same order.
  const int64_t p0 = u.group_partials(geo);
  const int np = geo.cpg * geo.nsplit;
  Welford<acc_t> w{0, 0, 0};
  for (int j = lane; j < np; j += 32) {
    const int split = j % geo.nsplit;
    const acc_t n = acc_t(geo.split_begin(split + 1) - geo.split_begin(split)) * acc_t(V);
    w = merge(w, Welford<acc_t>{n, partial[2 * (p0 + j)], partial[2 * (p0 + j) + 1]});
  }
  w = warp_merge(w);
  const acc_t mean = w.mean, rstd = rsqrt_acc(w.m2 / w.n + eps);
  if (threadIdx.x == 0 && u.c % geo.cpg == 0 && u.split == 0) {
    const int64_t bg = u.b * geo.groups + u.c / geo.cpg;
    mean_out[bg] = mean;
    rstd_out[bg] = rstd;
  }
  acc_t a, bb;
  af.fold(u.b, u.c, geo.channels, mean, rstd, a, bb);
  const int64_t base = u.b * geo.sb + u.c * geo.sc;
  for_each_vec<scalar_t, V, acc_t>(geo, x + base, geo.split_begin(u.split),
                                   geo.split_begin(u.split + 1), [&](int e, acc_t(&v)[V]) {
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const acc_t z = v[i] * a + bb;
      v[i] = silu ? z * sigmoid(z) : z;
    }
    store_vec<scalar_t, V>(y + base + geo.offset<V>(e), v);
  });
}

// ---- backward -------------------------------------------------------------------------------

// dL/dz from dL/dy at z (z = the pre-activation value).
template <typename acc_t>
__device__ __forceinline__ acc_t grad_z(acc_t dy, acc_t z, bool silu) {
  if (!silu) return dy;
  const acc_t sg = sigmoid(z);
  return dy * sg * (acc_t(1) + z * (acc_t(1) - sg));
}

// Per part: s1 = sum dz, s2 = rstd * sum dz (x - mean).
template <typename scalar_t, typename acc_t, int V>
__global__ void __launch_bounds__(kThreads) gn_bwd_sums_kernel(
    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x, const GnGeom geo,
    const Affine<acc_t> af, const acc_t* __restrict__ mean_in, const acc_t* __restrict__ rstd_in,
    bool silu, int64_t unit0, acc_t* __restrict__ partial) {
  const Unit u(geo, unit0);
  const int64_t bg = u.b * geo.groups + u.c / geo.cpg;
  const acc_t mean = mean_in[bg], rstd = rstd_in[bg];
  acc_t a, bb;
  af.fold(u.b, u.c, geo.channels, mean, rstd, a, bb);
  const int64_t base = u.b * geo.sb + u.c * geo.sc;
  acc_t s1 = 0, s2 = 0;
  for_each_vec<scalar_t, V, acc_t>(geo, x + base, geo.split_begin(u.split),
                                   geo.split_begin(u.split + 1), [&](int e, const acc_t(&v)[V]) {
    acc_t d[V];
    load_vec<scalar_t, V>(dy + base + geo.offset<V>(e), d);
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const acc_t g = grad_z(d[i], v[i] * a + bb, silu);
      s1 += g;
      s2 += g * (v[i] - mean);
    }
  });
  block_sum2(s1, s2);
  if (threadIdx.x == 0) {
    partial[2 * u.index] = s1;
    partial[2 * u.index + 1] = s2 * rstd;
  }
}

// dx = rstd (dz gain[c] - m1 - xhat m2) with gain = weight (1 + scale) and m1, m2 the group
// means of dz gain and dz gain xhat. Part 0 of each channel also stores the channel's sums.
template <typename scalar_t, typename acc_t, int V>
__global__ void __launch_bounds__(kThreads) gn_bwd_dx_kernel(
    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x, scalar_t* __restrict__ dx,
    const GnGeom geo, const Affine<acc_t> af, const acc_t* __restrict__ mean_in,
    const acc_t* __restrict__ rstd_in, bool silu, int64_t unit0, const acc_t* __restrict__ partial,
    acc_t* __restrict__ sums /* [B, C, 2] */, acc_t inv_count) {
  const Unit u(geo, unit0);
  const int lane = threadIdx.x % 32;
  const int64_t bg = u.b * geo.groups + u.c / geo.cpg;
  const acc_t mean = mean_in[bg], rstd = rstd_in[bg];
  const int64_t p0 = u.group_partials(geo);
  const int c0 = (u.c / geo.cpg) * geo.cpg;
  acc_t m1 = 0, m2 = 0;
  for (int j = lane; j < geo.cpg * geo.nsplit; j += 32) {
    const int c = c0 + j / geo.nsplit;
    const acc_t gain = af.w(c) * af.film(u.b * geo.channels + c);
    m1 += gain * partial[2 * (p0 + j)];
    m2 += gain * partial[2 * (p0 + j) + 1];
  }
  m1 = warp_sum(m1) * inv_count;
  m2 = warp_sum(m2) * inv_count;
  const int64_t bc = u.b * geo.channels + u.c;
  if (threadIdx.x == 0 && u.split == 0) {
    acc_t s1 = 0, s2 = 0;
    for (int k = 0; k < geo.nsplit; ++k) {
      s1 += partial[2 * (bc * geo.nsplit + k)];
      s2 += partial[2 * (bc * geo.nsplit + k) + 1];
    }
    sums[2 * bc] = s1;
    sums[2 * bc + 1] = s2;
  }
  acc_t a, bb;
  af.fold(u.b, u.c, geo.channels, mean, rstd, a, bb);
  const acc_t gain = af.w(u.c) * af.film(bc);
  const int64_t base = u.b * geo.sb + u.c * geo.sc;
  for_each_vec<scalar_t, V, acc_t>(geo, x + base, geo.split_begin(u.split),
                                   geo.split_begin(u.split + 1), [&](int e, const acc_t(&v)[V]) {
    const int64_t off = base + geo.offset<V>(e);
    acc_t d[V];
    load_vec<scalar_t, V>(dy + off, d);
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const acc_t g = grad_z(d[i], v[i] * a + bb, silu);
      d[i] = rstd * (g * gain - m1 - (v[i] - mean) * rstd * m2);
    }
    store_vec<scalar_t, V>(dx + off, d);
  });
}

// dweight[c] = sum_b (1 + scale) s2, dbias[c] = sum_b (1 + scale) s1 (b in order),
// dscale[b, c] = weight s2 + bias s1; dshift = s1 is read from `sums` by the host.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads) gn_param_grads_kernel(
    const acc_t* __restrict__ sums, const Affine<acc_t> af, int64_t batch, int channels,
    acc_t* __restrict__ dweight, acc_t* __restrict__ dbias, acc_t* __restrict__ dscale,
    acc_t* __restrict__ dshift) {
  const int c = blockIdx.x * kThreads + threadIdx.x;
  if (c >= channels) return;
  acc_t dw = 0, db = 0;
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t bc = b * channels + c;
    const acc_t s1 = sums[2 * bc], s2 = sums[2 * bc + 1], k = af.film(bc);
    dw += k * s2;
    db += k * s1;
    dscale[bc] = af.w(c) * s2 + af.bi(c) * s1;
    dshift[bc] = s1;
  }
  dweight[c] = dw;
  dbias[c] = db;
}

// ---- host side ---------------------------------------------------------------------------

// 16-byte vectors along S: unit S stride, whole vectors per plane, aligned rows.
bool vectorisable(const NormLayout& l, std::initializer_list<const at::Tensor*> tensors, int v) {
  if (v == 1) return true;
  if (l.ss != 1 || l.spatial % v != 0) return false;
  for (int64_t s : {l.sb, l.sf, l.sc}) {
    if (s % v != 0) return false;
  }
  for (const at::Tensor* t : tensors) {
    if (reinterpret_cast<uintptr_t>(t->data_ptr()) % 16 != 0) return false;
  }
  return true;
}

// What the launch plans size themselves by, for the current device.
struct DeviceLimits {
  int64_t wave_bytes;       // bytes per wave: about half the L2 cache (at least 1 MiB)
  int64_t blocks_per_round; // blocks of kThreads threads resident at once
};

DeviceLimits device_limits() {
  int device = 0, sms = 0, threads_per_sm = 0, l2_bytes = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&threads_per_sm, cudaDevAttrMaxThreadsPerMultiProcessor, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&l2_bytes, cudaDevAttrL2CacheSize, device));
  return {std::max<int64_t>(l2_bytes / 2, 1 << 20), int64_t{sms} * (threads_per_sm / kThreads)};
}

// Parts per (sample, channel) and groups per wave for tensors of `bytes_per_group` bytes read
// per group (x, or x and grad_y).
struct Plan {
  int nsplit;
  int64_t groups_per_wave;
};

Plan plan(const NormLayout& l, int64_t groups, int64_t vecs, int64_t bytes_per_group) {
  const DeviceLimits d = device_limits();
  const int64_t cpg = l.channels / groups;
  const int64_t total_groups = l.batch * groups;
  const int64_t per_wave =
      std::min(total_groups, std::max<int64_t>(1, d.wave_bytes / std::max<int64_t>(bytes_per_group, 1)));
  // about two rounds of resident blocks per wave, at least kUnroll vectors per thread
  const int64_t target = 2 * d.blocks_per_round;
  const int64_t max_split = std::max<int64_t>(1, vecs / (kThreads * kUnroll));
  const int64_t want = (target + per_wave * cpg - 1) / (per_wave * cpg);
  return {static_cast<int>(std::clamp<int64_t>(want, 1, max_split)), per_wave};
}

GnGeom make_geom(const NormLayout& l, int64_t groups, int v, int nsplit) {
  const int64_t vecs = l.frames * l.spatial / v;
  TORCH_CHECK(vecs < (int64_t{1} << 31) && l.spatial / v < (int64_t{1} << 31),
              "group_norm_act (CUDA): F * S must be < 2^31 per channel");
  GnGeom g{l.sb, l.sf, l.sc, l.ss,
           static_cast<int>(l.channels), static_cast<int>(groups),
           static_cast<int>(l.channels / groups), nsplit, static_cast<int>(vecs),
           IntDivider<unsigned int>(static_cast<unsigned int>(l.spatial / v))};
  return g;
}

template <typename acc_t>
struct AffineTensors {
  at::Tensor weight, bias, scale, shift;  // acc_t, contiguous; undefined when absent
  AffineTensors(const OptTensor& w, const OptTensor& b, const OptTensor& s, const OptTensor& sh,
                at::ScalarType acc)
      : weight(prep(w, acc)), bias(prep(b, acc)), scale(prep(s, acc)), shift(prep(sh, acc)) {}
  static at::Tensor prep(const OptTensor& t, at::ScalarType acc) {
    return t.has_value() && t->defined() ? t->to(acc).contiguous() : at::Tensor();
  }
  static const acc_t* ptr(const at::Tensor& t) {
    return t.defined() ? t.data_ptr<acc_t>() : nullptr;
  }
  Affine<acc_t> view() const { return {ptr(weight), ptr(bias), ptr(scale), ptr(shift)}; }
};

void check_inputs(const char* op, const at::Tensor& x, int64_t groups, int64_t channel_dim,
                  const OptTensor& weight, const OptTensor& bias, const OptTensor& scale,
                  const OptTensor& shift) {
  TORCH_CHECK(x.is_cuda(), op, ": x must be a CUDA tensor");
  ::mmattn::check_group_norm(op, x, groups, channel_dim, weight, bias, scale, shift);
}

// Runs body(V) with V = 16 / sizeof(scalar_t) when the layout allows 16-byte vectors, else 1.
template <typename scalar_t, typename F>
void with_vector_width(bool vec, F&& f) {
  if (vec) {
    f(std::integral_constant<int, 16 / sizeof(scalar_t)>());
  } else {
    f(std::integral_constant<int, 1>());
  }
}

template <typename scalar_t, typename acc_t, int V>
void planar_forward(const at::Tensor& x, at::Tensor& y, const NormLayout& l, int64_t G,
                    const Affine<acc_t>& af, at::Tensor& mean, at::Tensor& rstd, acc_t eps, bool silu,
                    cudaStream_t stream) {
  const int64_t vecs = l.frames * l.spatial / V, cpg = l.channels / G;
  const Plan pl = plan(l, G, vecs, l.frames * cpg * l.spatial * x.element_size());
  const GnGeom geo = make_geom(l, G, V, pl.nsplit);
  at::Tensor partial = at::empty({l.batch * l.channels * pl.nsplit * 2}, mean.options());
  const int64_t units_per_group = cpg * pl.nsplit;
  for (int64_t g0 = 0; g0 < l.batch * G; g0 += pl.groups_per_wave) {
    const int64_t groups = std::min(pl.groups_per_wave, l.batch * G - g0);
    const int64_t unit0 = g0 * units_per_group;
    const int64_t units = groups * units_per_group;
    TORCH_CHECK(units < (int64_t{1} << 31), "group_norm_act (CUDA): too many blocks");
    gn_stats_kernel<scalar_t, acc_t, V><<<static_cast<unsigned int>(units), kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), geo, unit0, partial.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    gn_apply_kernel<scalar_t, acc_t, V><<<static_cast<unsigned int>(units), kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), geo, af, unit0, partial.data_ptr<acc_t>(),
        mean.data_ptr<acc_t>(), rstd.data_ptr<acc_t>(), eps, silu);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename scalar_t, typename acc_t, int V>
void planar_backward(const at::Tensor& dy, const at::Tensor& x, at::Tensor& dx, const NormLayout& l,
                     int64_t G, const Affine<acc_t>& af, const at::Tensor& mean,
                     const at::Tensor& rstd, bool silu, at::Tensor& sums, cudaStream_t stream) {
  const int64_t B = l.batch, C = l.channels, vecs = l.frames * l.spatial / V, cpg = C / G;
  const Plan pl = plan(l, G, vecs, 2 * l.frames * cpg * l.spatial * x.element_size());
  const GnGeom geo = make_geom(l, G, V, pl.nsplit);
  at::Tensor partial = at::empty({B * C * pl.nsplit * 2}, sums.options());
  const acc_t inv_count = acc_t(1) / static_cast<acc_t>(l.frames * cpg * l.spatial);
  const int64_t units_per_group = cpg * pl.nsplit;
  for (int64_t g0 = 0; g0 < B * G; g0 += pl.groups_per_wave) {
    const int64_t groups = std::min(pl.groups_per_wave, B * G - g0);
    const int64_t unit0 = g0 * units_per_group;
    const int64_t units = groups * units_per_group;
    TORCH_CHECK(units < (int64_t{1} << 31), "group_norm_act (CUDA): too many blocks");
    gn_bwd_sums_kernel<scalar_t, acc_t, V><<<static_cast<unsigned int>(units), kThreads, 0, stream>>>(
        dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), geo, af, mean.data_ptr<acc_t>(),
        rstd.data_ptr<acc_t>(), silu, unit0, partial.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    gn_bwd_dx_kernel<scalar_t, acc_t, V><<<static_cast<unsigned int>(units), kThreads, 0, stream>>>(
        dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(), geo, af,
        mean.data_ptr<acc_t>(), rstd.data_ptr<acc_t>(), silu, unit0, partial.data_ptr<acc_t>(),
        sums.data_ptr<acc_t>(), inv_count);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// ---- channels-innermost layouts ---------------------------------------------------------------
//
// Frames-last video [B, F, C, H, W] (memory B, F, H, W, C) and channels_last images have unit
// channel stride: the planar kernels above would read one element per 32-byte sector. Here a
// sample is rows (positions) x columns (V contiguous channels), tiled as norm_tiling.h says:
//  forward:  stats kernel (per (chunk, channel) Welford partials) -> finalize kernel (one block
//            per group merges them in a fixed order; writes mean, rstd and each channel's folded
//            coefficients) -> apply kernel (y = act(x a + b), pure streaming);
//  backward: sums kernel (per (chunk, channel) sums) -> finalize kernel (per-channel sums for
//            the parameter gradients; each channel's dx coefficients) -> dx kernel.
// Samples run in waves of about half the L2 cache, so the second read of x hits L2.

// Geometry of the channels-innermost kernels: row p of sample b starts at
// b * sb + (p / S) * sf + (p % S) * ss.
struct ClGeom {
  int64_t sb, sf, ss;
  int channels, groups, cpg;
  RowTiling tiling;
  IntDivider<unsigned int> spatial;  // S

  __device__ __forceinline__ int64_t row_offset(int64_t p) const {
    const auto dm = spatial.divmod(static_cast<unsigned int>(p));
    return dm.div * sf + static_cast<int64_t>(dm.mod) * ss;
  }
};

// This thread's place: sample b, chunk rows [p0, p1), first channel c0 of its column.
struct ClThread {
  int64_t b, p0, p1;
  int c0, row_lane;
  bool active;
  template <int V>
  __device__ __forceinline__ ClThread(const ClGeom& g, int64_t b0, std::integral_constant<int, V>) {
    const RowTiling& t = g.tiling;
    b = b0 + blockIdx.z;
    p0 = t.chunk_begin(blockIdx.x);
    p1 = t.chunk_begin(blockIdx.x + 1);
    row_lane = t.row_lane_of(threadIdx.x);
    c0 = t.col_of(blockIdx.y, threadIdx.x) * V;
    active = t.active(blockIdx.y, threadIdx.x);
  }
  // index of the (sample, chunk, channel c) partial
  __device__ __forceinline__ int64_t partial(const ClGeom& g, int c) const {
    return (b * g.tiling.chunks + blockIdx.x) * g.channels + c;
  }
};

// Applies f(p, x, dy) to the rows of this thread's chunk, kUnroll rows in flight; dy is read
// only when `kPair` (else f gets x twice).
template <bool kPair, typename scalar_t, int V, typename acc_t, typename F>
__device__ __forceinline__ void for_each_row(const ClGeom& g, const ClThread& th,
                                             const scalar_t* __restrict__ x,
                                             const scalar_t* __restrict__ dy, F&& f) {
  const int64_t step = g.tiling.rows_per_pass;
  for (int64_t p = th.p0 + th.row_lane; p < th.p1; p += step * kUnroll) {
    acc_t v[kUnroll][V], d[kUnroll][kPair ? V : 1];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t pu = p + u * step;
      if (pu < th.p1) {
        const int64_t off = g.row_offset(pu);
        load_vec<scalar_t, V>(x + off, v[u]);
        if constexpr (kPair) load_vec<scalar_t, V>(dy + off, d[u]);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t pu = p + u * step;
      if (pu < th.p1) {
        if constexpr (kPair) {
          f(pu, v[u], d[u]);
        } else {
          f(pu, v[u], v[u]);
        }
      }
    }
  }
}

template <typename scalar_t, typename acc_t, int V>
__global__ void __launch_bounds__(kThreads) gn_cl_stats_kernel(const scalar_t* __restrict__ x,
                                                               const ClGeom g, int64_t b0,
                                                               acc_t* __restrict__ partial) {
  __shared__ acc_t sh_n[kThreads], sh_mean[kThreads * V], sh_m2[kThreads * V];
  const ClThread th(g, b0, std::integral_constant<int, V>());
  acc_t n = 0, mean[V], m2[V];
#pragma unroll
  for (int i = 0; i < V; ++i) mean[i] = m2[i] = 0;
  if (th.active) {
    for_each_row<false, scalar_t, V, acc_t>(g, th, x + th.b * g.sb + th.c0, nullptr,
                                            [&](int64_t, const acc_t(&v)[V], const acc_t(&)[V]) {
      n += acc_t(1);
      const acc_t inv = acc_t(1) / n;
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const acc_t delta = v[i] - mean[i];
        mean[i] += delta * inv;
        m2[i] += delta * (v[i] - mean[i]);
      }
    });
  }
  sh_n[threadIdx.x] = n;
#pragma unroll
  for (int i = 0; i < V; ++i) {
    sh_mean[threadIdx.x * V + i] = mean[i];
    sh_m2[threadIdx.x * V + i] = m2[i];
  }
  __syncthreads();
  if (!th.active || th.row_lane != 0) return;
  // row lane 0 merges the column's row lanes in order
  const int tile_cols = g.tiling.tile_cols;
  for (int i = 0; i < V; ++i) {
    Welford<acc_t> w{sh_n[threadIdx.x], sh_mean[threadIdx.x * V + i], sh_m2[threadIdx.x * V + i]};
    for (int r = 1; r < g.tiling.rows_per_pass; ++r) {
      const int j = r * tile_cols + threadIdx.x;
      w = merge(w, Welford<acc_t>{sh_n[j], sh_mean[j * V + i], sh_m2[j * V + i]});
    }
    const int64_t k = th.partial(g, th.c0 + i);
    partial[2 * k] = w.mean;
    partial[2 * k + 1] = w.m2;
  }
}

// One block per (sample, group): the group's mean and rstd from its chunks' partials, then
// each channel's folded coefficients (a, b) of z = x a + b.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads) gn_cl_finalize_kernel(
    const ClGeom g, const Affine<acc_t> af, int64_t b0, const acc_t* __restrict__ partial,
    acc_t* __restrict__ mean_out, acc_t* __restrict__ rstd_out, acc_t* __restrict__ coef, acc_t eps) {
  __shared__ acc_t sh_stats[2];
  const int64_t bg = b0 * g.groups + blockIdx.x;
  const int64_t b = bg / g.groups;
  const int c0 = static_cast<int>(bg % g.groups) * g.cpg;
  const RowTiling& t = g.tiling;
  Welford<acc_t> w{0, 0, 0};
  for (int c = c0; c < c0 + g.cpg; ++c) {
    for (int k = threadIdx.x; k < t.chunks; k += kThreads) {
      const int64_t j = (b * t.chunks + k) * g.channels + c;
      const acc_t n = static_cast<acc_t>(t.chunk_begin(k + 1) - t.chunk_begin(k));
      w = merge(w, Welford<acc_t>{n, partial[2 * j], partial[2 * j + 1]});
    }
  }
  w = block_merge(w);
  if (threadIdx.x == 0) {
    const acc_t rstd = rsqrt_acc(w.m2 / w.n + eps);
    mean_out[bg] = sh_stats[0] = w.mean;
    rstd_out[bg] = sh_stats[1] = rstd;
  }
  __syncthreads();
  const acc_t mean = sh_stats[0], rstd = sh_stats[1];
  for (int c = c0 + threadIdx.x; c < c0 + g.cpg; c += kThreads) {
    acc_t a, bb;
    af.fold(b, c, g.channels, mean, rstd, a, bb);
    coef[2 * (b * g.channels + c)] = a;
    coef[2 * (b * g.channels + c) + 1] = bb;
  }
}

template <typename scalar_t, typename acc_t, int V>
__global__ void __launch_bounds__(kThreads) gn_cl_apply_kernel(
    const scalar_t* __restrict__ x, scalar_t* __restrict__ y, const ClGeom g, int64_t b0,
    const acc_t* __restrict__ coef, bool silu) {
  const ClThread th(g, b0, std::integral_constant<int, V>());
  if (!th.active) return;
  acc_t a[V], bb[V];
#pragma unroll
  for (int i = 0; i < V; ++i) {
    a[i] = coef[2 * (th.b * g.channels + th.c0 + i)];
    bb[i] = coef[2 * (th.b * g.channels + th.c0 + i) + 1];
  }
  const int64_t base = th.b * g.sb + th.c0;
  for_each_row<false, scalar_t, V, acc_t>(g, th, x + base, nullptr,
                                          [&](int64_t p, const acc_t(&v)[V], const acc_t(&)[V]) {
    acc_t out[V];
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const acc_t z = v[i] * a[i] + bb[i];
      out[i] = silu ? z * sigmoid(z) : z;
    }
    store_vec<scalar_t, V>(y + base + g.row_offset(p), out);
  });
}

// Per (chunk, channel): s1 = sum dz, s2 = rstd * sum dz (x - mean).
template <typename scalar_t, typename acc_t, int V>
__global__ void __launch_bounds__(kThreads) gn_cl_bwd_sums_kernel(
    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x, const ClGeom g,
    const Affine<acc_t> af, const acc_t* __restrict__ mean_in, const acc_t* __restrict__ rstd_in,
    bool silu, int64_t b0, acc_t* __restrict__ partial) {
  __shared__ acc_t sh_s1[kThreads * V], sh_s2[kThreads * V];
  const ClThread th(g, b0, std::integral_constant<int, V>());
  acc_t s1[V], s2[V], a[V], bb[V], mean[V], rstd[V];
#pragma unroll
  for (int i = 0; i < V; ++i) s1[i] = s2[i] = 0;
  if (th.active) {
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const int c = th.c0 + i;
      const int64_t bg = th.b * g.groups + c / g.cpg;
      mean[i] = mean_in[bg];
      rstd[i] = rstd_in[bg];
      af.fold(th.b, c, g.channels, mean[i], rstd[i], a[i], bb[i]);
    }
    const int64_t base = th.b * g.sb + th.c0;
    for_each_row<true, scalar_t, V, acc_t>(g, th, x + base, dy + base,
                                           [&](int64_t, const acc_t(&v)[V], const acc_t(&d)[V]) {
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const acc_t gz = grad_z(d[i], v[i] * a[i] + bb[i], silu);
        s1[i] += gz;
        s2[i] += gz * (v[i] - mean[i]);
      }
    });
  }
#pragma unroll
  for (int i = 0; i < V; ++i) {
    sh_s1[threadIdx.x * V + i] = s1[i];
    sh_s2[threadIdx.x * V + i] = s2[i];
  }
  __syncthreads();
  if (!th.active || th.row_lane != 0) return;
  const int tile_cols = g.tiling.tile_cols;
  for (int i = 0; i < V; ++i) {
    acc_t t1 = sh_s1[threadIdx.x * V + i], t2 = sh_s2[threadIdx.x * V + i];
    for (int r = 1; r < g.tiling.rows_per_pass; ++r) {
      const int j = r * tile_cols + threadIdx.x;
      t1 += sh_s1[j * V + i];
      t2 += sh_s2[j * V + i];
    }
    const int64_t k = th.partial(g, th.c0 + i);
    partial[2 * k] = t1;
    partial[2 * k + 1] = t2 * rstd[i];
  }
}

// One block per (sample, group): each channel's (sum dz, sum dz xhat) over the chunks (kept in
// `sums` for the parameter gradients), then each channel's coefficients of
// dx = dz k1 + x k2 + k3 (with the forward's a, b to recompute z), stored as [a, b, k1, k2, k3].
template <typename acc_t>
__global__ void __launch_bounds__(kThreads) gn_cl_bwd_finalize_kernel(
    const ClGeom g, const Affine<acc_t> af, int64_t b0, const acc_t* __restrict__ partial,
    const acc_t* __restrict__ mean_in, const acc_t* __restrict__ rstd_in,
    acc_t* __restrict__ sums /* [B, C, 2] */, acc_t* __restrict__ coef /* [B, C, 5] */,
    acc_t inv_count) {
  __shared__ acc_t sh_m[2];
  const int64_t bg = b0 * g.groups + blockIdx.x;
  const int64_t b = bg / g.groups;
  const int c0 = static_cast<int>(bg % g.groups) * g.cpg;
  const acc_t mean = mean_in[bg], rstd = rstd_in[bg];
  const RowTiling& t = g.tiling;
  acc_t m1 = 0, m2 = 0;  // valid in thread 0
  for (int c = c0; c < c0 + g.cpg; ++c) {
    acc_t s1 = 0, s2 = 0;
    for (int k = threadIdx.x; k < t.chunks; k += kThreads) {
      const int64_t j = (b * t.chunks + k) * g.channels + c;
      s1 += partial[2 * j];
      s2 += partial[2 * j + 1];
    }
    block_sum2(s1, s2);
    if (threadIdx.x == 0) {
      const int64_t bc = b * g.channels + c;
      sums[2 * bc] = s1;
      sums[2 * bc + 1] = s2;
      const acc_t gain = af.w(c) * af.film(bc);
      m1 += gain * s1;
      m2 += gain * s2;
    }
    __syncthreads();  // block_sum2's shared memory is reused by the next channel
  }
  if (threadIdx.x == 0) {
    sh_m[0] = m1 * inv_count;
    sh_m[1] = m2 * inv_count;
  }
  __syncthreads();
  m1 = sh_m[0];
  m2 = sh_m[1];
  for (int c = c0 + threadIdx.x; c < c0 + g.cpg; c += kThreads) {
    const int64_t bc = b * g.channels + c;
    acc_t a, bb;
    af.fold(b, c, g.channels, mean, rstd, a, bb);
    acc_t* k = coef + 5 * bc;
    k[0] = a;
    k[1] = bb;
    k[2] = rstd * af.w(c) * af.film(bc);
    k[3] = -rstd * rstd * m2;
    k[4] = rstd * (mean * rstd * m2 - m1);
  }
}

template <typename scalar_t, typename acc_t, int V>
__global__ void __launch_bounds__(kThreads) gn_cl_bwd_dx_kernel(
    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x, scalar_t* __restrict__ dx,
    const ClGeom g, int64_t b0, const acc_t* __restrict__ coef, bool silu) {
  const ClThread th(g, b0, std::integral_constant<int, V>());
  if (!th.active) return;
  acc_t k[5][V];
#pragma unroll
  for (int i = 0; i < V; ++i) {
#pragma unroll
    for (int j = 0; j < 5; ++j) k[j][i] = coef[5 * (th.b * g.channels + th.c0 + i) + j];
  }
  const int64_t base = th.b * g.sb + th.c0;
  for_each_row<true, scalar_t, V, acc_t>(g, th, x + base, dy + base,
                                         [&](int64_t p, const acc_t(&v)[V], const acc_t(&d)[V]) {
    acc_t out[V];
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const acc_t gz = grad_z(d[i], v[i] * k[0][i] + k[1][i], silu);
      out[i] = gz * k[2][i] + v[i] * k[3][i] + k[4][i];
    }
    store_vec<scalar_t, V>(dx + base + g.row_offset(p), out);
  });
}

// ---- host side of the channels-innermost kernels ---------------------------------------------

// Unit channel stride and several channels: rows of contiguous channels (also for S = 1, where
// the CPU keeps its planar kernel: on a GPU coalesced channel rows win).
bool channels_inner(const NormLayout& l) { return l.sc == 1 && l.channels > 1; }

// 16-byte vectors along channels: whole vectors per row, aligned rows.
bool cl_vectorisable(const NormLayout& l, std::initializer_list<const at::Tensor*> tensors, int v) {
  if (v == 1) return true;
  if (l.channels % v != 0 || l.sb % v != 0 || (l.frames > 1 && l.sf % v != 0) ||
      (l.spatial > 1 && l.ss % v != 0)) {
    return false;
  }
  for (const at::Tensor* t : tensors) {
    if (reinterpret_cast<uintptr_t>(t->data_ptr()) % 16 != 0) return false;
  }
  return true;
}

// Geometry for vectors of `v` channels, and the samples per wave (`bytes_per_sample` read per
// sample: x, or x and grad_y).
ClGeom make_cl_geom(const NormLayout& l, int64_t groups, int v, int64_t bytes_per_sample,
                    int64_t* samples_per_wave) {
  const DeviceLimits d = device_limits();
  const int64_t rows = l.frames * l.spatial;
  TORCH_CHECK(rows < (int64_t{1} << 31), "group_norm_act (CUDA): F * S must be < 2^31");
  *samples_per_wave = std::clamp<int64_t>(d.wave_bytes / std::max<int64_t>(bytes_per_sample, 1), 1,
                                          std::min<int64_t>(l.batch, 65535));
  // about two rounds of resident blocks per wave
  const int64_t blocks = 2 * d.blocks_per_round;
  const RowTiling tiling = make_row_tiling(rows, static_cast<int>(l.channels / v), kThreads,
                                           (blocks + *samples_per_wave - 1) / *samples_per_wave, kUnroll);
  TORCH_CHECK(tiling.col_tiles <= 65535, "group_norm_act (CUDA): too many channels");
  return {l.sb, l.sf, l.ss, static_cast<int>(l.channels), static_cast<int>(groups),
          static_cast<int>(l.channels / groups), tiling,
          IntDivider<unsigned int>(static_cast<unsigned int>(l.spatial))};
}

template <typename scalar_t, typename acc_t, int V>
void cl_forward(const at::Tensor& x, at::Tensor& y, const NormLayout& l, int64_t G,
                const Affine<acc_t>& af, at::Tensor& mean, at::Tensor& rstd, acc_t eps, bool silu,
                cudaStream_t stream) {
  int64_t per_wave = 1;
  const ClGeom geo = make_cl_geom(l, G, V, l.frames * l.spatial * l.channels * x.element_size(), &per_wave);
  const auto acc = x.options().dtype(mean.scalar_type());
  at::Tensor partial = at::empty({l.batch * geo.tiling.chunks * l.channels * 2}, acc);
  at::Tensor coef = at::empty({l.batch * l.channels * 2}, acc);
  for (int64_t b0 = 0; b0 < l.batch; b0 += per_wave) {
    const int64_t nb = std::min(per_wave, l.batch - b0);
    const dim3 grid(geo.tiling.chunks, geo.tiling.col_tiles, static_cast<unsigned int>(nb));
    gn_cl_stats_kernel<scalar_t, acc_t, V><<<grid, kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), geo, b0, partial.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    gn_cl_finalize_kernel<acc_t><<<static_cast<unsigned int>(nb * G), kThreads, 0, stream>>>(
        geo, af, b0, partial.data_ptr<acc_t>(), mean.data_ptr<acc_t>(), rstd.data_ptr<acc_t>(),
        coef.data_ptr<acc_t>(), eps);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    gn_cl_apply_kernel<scalar_t, acc_t, V><<<grid, kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), geo, b0, coef.data_ptr<acc_t>(), silu);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename scalar_t, typename acc_t, int V>
void cl_backward(const at::Tensor& dy, const at::Tensor& x, at::Tensor& dx, const NormLayout& l,
                 int64_t G, const Affine<acc_t>& af, const at::Tensor& mean, const at::Tensor& rstd,
                 bool silu, at::Tensor& sums, cudaStream_t stream) {
  int64_t per_wave = 1;
  const ClGeom geo =
      make_cl_geom(l, G, V, 2 * l.frames * l.spatial * l.channels * x.element_size(), &per_wave);
  const auto acc = sums.options();
  at::Tensor partial = at::empty({l.batch * geo.tiling.chunks * l.channels * 2}, acc);
  at::Tensor coef = at::empty({l.batch * l.channels * 5}, acc);
  const acc_t inv_count = acc_t(1) / static_cast<acc_t>(l.frames * l.spatial * (l.channels / G));
  for (int64_t b0 = 0; b0 < l.batch; b0 += per_wave) {
    const int64_t nb = std::min(per_wave, l.batch - b0);
    const dim3 grid(geo.tiling.chunks, geo.tiling.col_tiles, static_cast<unsigned int>(nb));
    gn_cl_bwd_sums_kernel<scalar_t, acc_t, V><<<grid, kThreads, 0, stream>>>(
        dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), geo, af, mean.data_ptr<acc_t>(),
        rstd.data_ptr<acc_t>(), silu, b0, partial.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    gn_cl_bwd_finalize_kernel<acc_t><<<static_cast<unsigned int>(nb * G), kThreads, 0, stream>>>(
        geo, af, b0, partial.data_ptr<acc_t>(), mean.data_ptr<acc_t>(), rstd.data_ptr<acc_t>(),
        sums.data_ptr<acc_t>(), coef.data_ptr<acc_t>(), inv_count);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    gn_cl_bwd_dx_kernel<scalar_t, acc_t, V><<<grid, kThreads, 0, stream>>>(
        dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(), geo, b0,
        coef.data_ptr<acc_t>(), silu);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace
}  // namespace cuda

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_act_fwd_cuda(
    const at::Tensor& x_in, int64_t G, const OptTensor& weight, const OptTensor& bias,
    const OptTensor& scale, const OptTensor& shift, bool silu, double eps, int64_t channel_dim) {
  using namespace cuda;
  check_inputs("group_norm_act_fwd", x_in, G, channel_dim, weight, bias, scale, shift);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = flattenable(x_in, channel_dim);
  at::Tensor y_result = at::empty_like(x_in);  // the strides the fake kernel promises
  at::Tensor y = x.is_same(x_in) ? y_result : at::empty_like(x);
  const at::ScalarType acc = stats_dtype(x.scalar_type());
  at::Tensor mean = at::empty({x.size(0), G}, x.options().dtype(acc));
  at::Tensor rstd = at::empty({x.size(0), G}, x.options().dtype(acc));
  if (x.numel() == 0) return {y_result, mean.zero_(), rstd.zero_()};
  const NormLayout l = *layout_of(x, channel_dim);
  TORCH_INTERNAL_ASSERT(y.strides() == x.strides(), "empty_like of a dense tensor keeps strides");
  const auto stream = c10::cuda::getCurrentCUDAStream();

  dispatch_floating(x.scalar_type(), "group_norm_act", [&](auto zero) {
    using scalar_t = decltype(zero);
    using acc_t = acc_type<scalar_t>;
    const AffineTensors<acc_t> af(weight, bias, scale, shift, acc);
    constexpr int kVec = 16 / sizeof(scalar_t);
    if (channels_inner(l)) {
      with_vector_width<scalar_t>(cl_vectorisable(l, {&x, &y}, kVec), [&](auto width) {
        cl_forward<scalar_t, acc_t, decltype(width)::value>(x, y, l, G, af.view(), mean, rstd,
                                                            static_cast<acc_t>(eps), silu, stream);
      });
    } else {
      with_vector_width<scalar_t>(vectorisable(l, {&x, &y}, kVec), [&](auto width) {
        planar_forward<scalar_t, acc_t, decltype(width)::value>(x, y, l, G, af.view(), mean, rstd,
                                                                static_cast<acc_t>(eps), silu, stream);
      });
    }
  });
  if (!y.is_same(y_result)) y_result.copy_(y);
  return {y_result, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> group_norm_act_bwd_cuda(
    const at::Tensor& dy_in, const at::Tensor& x_in, const at::Tensor& mean_in,
    const at::Tensor& rstd_in, int64_t G, const OptTensor& weight, const OptTensor& bias,
    const OptTensor& scale, const OptTensor& shift, bool silu, int64_t channel_dim) {
  using namespace cuda;
  check_inputs("group_norm_act_bwd", x_in, G, channel_dim, weight, bias, scale, shift);
  ::mmattn::check_group_norm_grads("group_norm_act_bwd", dy_in, x_in, mean_in, rstd_in, G);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = flattenable(x_in, channel_dim);
  // grad_y in x's layout, so that one set of strides serves x, grad_y and grad_x
  const at::Tensor dy = dy_in.strides() == x.strides() ? dy_in : at::empty_like(x).copy_(dy_in);
  const at::ScalarType acc = stats_dtype(x.scalar_type());
  const int64_t B = x.size(0), C = x.size(channel_dim);
  const at::Tensor mean = mean_in.contiguous(), rstd = rstd_in.contiguous();
  at::Tensor dx_result = at::empty_like(x_in);
  at::Tensor dx = x.is_same(x_in) ? dx_result : at::empty_like(x);
  // (sum dz, sum dz xhat) per (b, c): written by the dx kernel, zero for an empty x
  at::Tensor sums = at::empty({B, C, 2}, x.options().dtype(acc));
  if (x.numel() == 0) sums.zero_();
  at::Tensor dweight = at::empty({C}, sums.options());  // all written by gn_param_grads_kernel
  at::Tensor dbias = at::empty({C}, sums.options());
  at::Tensor dscale = at::empty({B, C}, sums.options());
  at::Tensor dshift = at::empty({B, C}, sums.options());
  const auto stream = c10::cuda::getCurrentCUDAStream();

  dispatch_floating(x.scalar_type(), "group_norm_act", [&](auto zero) {
    using scalar_t = decltype(zero);
    using acc_t = acc_type<scalar_t>;
    const AffineTensors<acc_t> af(weight, bias, scale, shift, acc);
    if (x.numel() > 0) {
      const NormLayout l = *layout_of(x, channel_dim);
      TORCH_INTERNAL_ASSERT(dx.strides() == x.strides() && dy.strides() == x.strides());
      constexpr int kVec = 16 / sizeof(scalar_t);
      if (channels_inner(l)) {
        with_vector_width<scalar_t>(cl_vectorisable(l, {&x, &dy, &dx}, kVec), [&](auto width) {
          cl_backward<scalar_t, acc_t, decltype(width)::value>(dy, x, dx, l, G, af.view(), mean,
                                                               rstd, silu, sums, stream);
        });
      } else {
        with_vector_width<scalar_t>(vectorisable(l, {&x, &dy, &dx}, kVec), [&](auto width) {
          planar_backward<scalar_t, acc_t, decltype(width)::value>(dy, x, dx, l, G, af.view(), mean,
                                                                   rstd, silu, sums, stream);
        });
      }
    }
    if (C > 0) {
      gn_param_grads_kernel<acc_t><<<(C + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
          sums.data_ptr<acc_t>(), af.view(), B, static_cast<int>(C), dweight.data_ptr<acc_t>(),
          dbias.data_ptr<acc_t>(), dscale.data_ptr<acc_t>(), dshift.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  if (!dx.is_same(dx_result)) dx_result.copy_(dx);
  auto dtype_of = [&](const OptTensor& t) {
    return t.has_value() && t->defined() ? t->scalar_type() : x.scalar_type();
  };
  return {dx_result, dweight.to(dtype_of(weight)), dbias.to(dtype_of(bias)),
          dscale.to(dtype_of(scale)), dshift.to(dtype_of(shift))};
}

}  // namespace mmattn
