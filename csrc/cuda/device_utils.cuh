// Device building blocks of the CUDA kernels: tensor-core fragments (mma.sync m16n8k16,
// ldmatrix), asynchronous global->shared copies, warp reductions, 16-byte vector access.
//
// Fragment layouts (PTX ISA, "Matrix fragments for mma.m16n8k16"), with g = lane / 4 and
// t = lane % 4:
//   A 16x16 (row-major), 4 registers of two 16-bit values:
//     a0: (g, 2t..2t+1)  a1: (g+8, 2t..2t+1)  a2: (g, 2t+8..2t+9)  a3: (g+8, 2t+8..2t+9)
//   B 16x8 ("col"), 2 registers:   b0: (k = 2t..2t+1, n = g)   b1: (k = 2t+8..2t+9, n = g)
//   C 16x8 float, 4 registers:     c0, c1: (g, 2t..2t+1)       c2, c3: (g+8, 2t..2t+1)
// so the C fragments of two neighbouring n8 blocks, packed to 16 bits, are the A fragment of
// the next product (P -> P V without a trip through shared memory).
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace mmattn::cuda {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// ---- tensor cores (sm_80+) -------------------------------------------------------------

template <typename T>
struct Mma16;  // T: c10::BFloat16 or c10::Half

template <>
struct Mma16<c10::BFloat16> {
  // Two floats rounded to bf16; `lo` goes to the low half (the lower column index).
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    uint32_t r;
    memcpy(&r, &v, sizeof(r));
    return r;
  }
  // c += a * b over a 16x8x16 tile, float accumulation.
  static __device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

template <>
struct Mma16<c10::Half> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    const __half2 v = __floats2half2_rn(lo, hi);
    uint32_t r;
    memcpy(&r, &v, sizeof(r));
    return r;
  }
  static __device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Four 8x8 matrices of 16-bit values; lane i gives the address of row i % 8 of matrix i / 8,
// and receives in r[j] the values (lane / 4, 2 (lane % 4) .. +1) of matrix j (transposed
// first with `_trans`).
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

// Addresses of the ldmatrix.x4 patterns over a row-major shared tile with `pitch` elements
// per row, for the 16x16 block at (row0, col0):
//  - A operand (rows = M, cols = K), non-transposed: matrices (r0-7,c0-7) (r8-15,c0-7)
//    (r0-7,c8-15) (r8-15,c8-15) -> a0..a3.
//  - B operand stored as [N][K] (K^T, keys as rows), non-transposed: matrices (n0-7,k0-7)
//    (n0-7,k8-15) (n8-15,k0-7) (n8-15,k8-15) -> b0, b1 of n block 0, b0, b1 of n block 1.
//  - B operand stored as [K][N] (V, keys as rows), transposed: matrices (k0-7,n0-7)
//    (k8-15,n0-7) (k0-7,n8-15) (k8-15,n8-15) -> b0, b1 of n block 0, b0, b1 of n block 1.
// The A pattern and the [K][N] pattern use the same addresses.
template <typename T>
__device__ __forceinline__ uint32_t ldsm_addr_a(const T* tile, int pitch, int row0, int col0,
                                                int lane) {
  return smem_addr(tile + (row0 + (lane & 7) + ((lane >> 3) & 1) * 8) * pitch + col0 +
                   (lane >> 4) * 8);
}

template <typename T>
__device__ __forceinline__ uint32_t ldsm_addr_b_nk(const T* tile, int pitch, int n0, int k0,
                                                   int lane) {
  return smem_addr(tile + (n0 + (lane & 7) + (lane >> 4) * 8) * pitch + k0 +
                   ((lane >> 3) & 1) * 8);
}

// ---- asynchronous copies (sm_80+) --------------------------------------------------------

// 16 bytes global -> shared; when !valid nothing is read and the 16 bytes are zero-filled.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
  const int bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)),
               "l"(gmem), "r"(bytes)
               : "memory");
}

__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}

// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// ---- reductions ------------------------------------------------------------------------

// Butterfly reductions: every lane ends with the same bits (each step adds the same two
// values in either order, and + and max are commutative).
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

// ---- math in the accumulation type ---------------------------------------------------------

__device__ __forceinline__ float exp_acc(float x) { return __expf(x); }
__device__ __forceinline__ double exp_acc(double x) { return exp(x); }
__device__ __forceinline__ float log_acc(float x) { return __logf(x); }
__device__ __forceinline__ double log_acc(double x) { return log(x); }
__device__ __forceinline__ float rsqrt_acc(float x) { return rsqrtf(x); }
__device__ __forceinline__ double rsqrt_acc(double x) { return 1.0 / sqrt(x); }

// ---- vectors of V elements (16 bytes when V > 1) -----------------------------------------

template <typename scalar_t, int V, typename acc_t>
__device__ __forceinline__ void load_vec(const scalar_t* p, acc_t (&v)[V]) {
  if constexpr (V == 1) {
    v[0] = static_cast<acc_t>(p[0]);
  } else {
    static_assert(sizeof(scalar_t) * V == 16, "vectors are 16 bytes");
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    scalar_t e[V];
    memcpy(e, &raw, sizeof(raw));
#pragma unroll
    for (int i = 0; i < V; ++i) v[i] = static_cast<acc_t>(e[i]);
  }
}

template <typename scalar_t, int V, typename acc_t>
__device__ __forceinline__ void store_vec(scalar_t* p, const acc_t (&v)[V]) {
  if constexpr (V == 1) {
    p[0] = static_cast<scalar_t>(v[0]);
  } else {
    scalar_t e[V];
#pragma unroll
    for (int i = 0; i < V; ++i) e[i] = static_cast<scalar_t>(v[i]);
    uint4 raw;
    memcpy(&raw, e, sizeof(raw));
    *reinterpret_cast<uint4*>(p) = raw;
  }
}

// ---- host: dtype dispatch --------------------------------------------------------------------

// f(scalar_t{}) for the four floating dtypes (a light stand-in for AT_DISPATCH: the kernels'
// translation units stay free of the heavy ATen headers, which dominate their build time).
template <typename F>
void dispatch_floating(c10::ScalarType t, const char* op, F&& f) {
  switch (t) {
    case c10::ScalarType::Float: f(float{}); break;
    case c10::ScalarType::Double: f(double{}); break;
    case c10::ScalarType::BFloat16: f(c10::BFloat16{}); break;
    case c10::ScalarType::Half: f(c10::Half{}); break;
    default: TORCH_CHECK(false, op, ": unsupported dtype ", t);
  }
}

// float accumulation, double for double
template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

}  // namespace mmattn::cuda
