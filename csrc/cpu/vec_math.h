// Small math kernels for the CPU operators, written so that GCC/Clang auto-vectorise them.
//
// Hot float loops are compiled once per instruction set (AVX-512F, AVX2, baseline) and
// picked at load time (`MMATTN_CPU_CLONES`); float64 keeps libm's exp so float64 results
// match a float64 reference to rounding.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__)
#define MMATTN_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MMATTN_CPU_CLONES
#endif
#define MMATTN_INLINE inline __attribute__((always_inline))
// A loop whose accumulators may be split across SIMD lanes (needs -fopenmp-simd).
#define MMATTN_PRAGMA(x) _Pragma(#x)
#define MMATTN_SIMD_REDUCE(...) MMATTN_PRAGMA(omp simd reduction(__VA_ARGS__))

namespace mmattn::cpu {

// exp(x) in float, branch-free (Cephes polynomial, ~1 ulp on [-87.3, 88.37]; NaN stays NaN).
// x is clamped to that range: below it the result is exp(-87.3) ~ 1.2e-38 (not 0 or a
// denormal), above it exp(88.37) ~ 2.6e38 (not inf); the upper bound keeps 2^round(x / ln 2)
// a finite float. Written to vectorise into plain SIMD arithmetic: clamps as ternaries
// (std::min/max become compares and blends), rounding by adding 1.5 * 2^23 (no float-int
// conversions).
MMATTN_INLINE float exp_approx(float x) {
  x = x < -87.3f ? -87.3f : x;
  x = x > 88.3762626f ? 88.3762626f : x;  // 127.5 ln 2: round(x / ln 2) <= 127
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: t's low mantissa bits hold round(x / ln 2)
  const float t = x * 1.44269504088896341f + kRound;
  const float n = t - kRound;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  uint32_t bits;
  std::memcpy(&bits, &t, sizeof(bits));
  bits = (bits + 127u) << 23;  // 2^n: the 1.5 * 2^23 offset shifts out
  float two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  return p * two_n;
}

MMATTN_INLINE float exp_(float x) { return exp_approx(x); }
MMATTN_INLINE double exp_(double x) { return std::exp(x); }

// silu(z) = z * sigmoid(z) and its derivative sigmoid(z) * (1 + z * (1 - sigmoid(z))).
template <typename T>
MMATTN_INLINE T sigmoid_(T z) { return T(1) / (T(1) + exp_(-z)); }

}  // namespace mmattn::cpu
