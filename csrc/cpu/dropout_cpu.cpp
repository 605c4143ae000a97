// CPU dropout with a counter-based mask: element i of the output's memory is kept iff
// hash(seed, i) >= p * 2^32, so the mask is a function of (seed, index) that the backward
// recomputes instead of storing it, and every thread generates its part independently.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>

#include "ops.h"
#include "vec_math.h"

namespace mmattn {
namespace {

constexpr int64_t kGrain = 1 << 15;

// SplitMix64 finaliser of seed + (i + 1) * golden ratio: the top 32 bits are uniform.
MMATTN_INLINE uint32_t mask_bits(uint64_t seed, uint64_t i) {
  uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return static_cast<uint32_t>((z ^ (z >> 31)) >> 32);
}

template <typename T, typename acc_t>
MMATTN_INLINE void dropout_impl(const T* x, T* y, int64_t begin, int64_t end, uint64_t seed,
                                uint32_t threshold, acc_t scale) {
  for (int64_t i = begin; i < end; ++i) {
    const acc_t keep = mask_bits(seed, static_cast<uint64_t>(i)) >= threshold ? scale : acc_t(0);
    y[i] = static_cast<T>(static_cast<acc_t>(x[i]) * keep);
  }
}
MMATTN_CPU_CLONES void dropout_range(const float* x, float* y, int64_t begin, int64_t end,
                                     uint64_t seed, uint32_t threshold, float scale) {
  dropout_impl(x, y, begin, end, seed, threshold, scale);
}
template <typename T, typename acc_t>
void dropout_range(const T* x, T* y, int64_t begin, int64_t end, uint64_t seed,
                   uint32_t threshold, acc_t scale) {
  dropout_impl(x, y, begin, end, seed, threshold, scale);
}

}  // namespace

at::Tensor dropout_cpu(const at::Tensor& x_in, double p, int64_t seed) {
  TORCH_CHECK(p >= 0.0 && p < 1.0, "dropout: p must be in [0, 1), got ", p);
  const at::Tensor x = x_in.is_non_overlapping_and_dense() ? x_in : x_in.contiguous();
  at::Tensor y = at::empty_like(x);  // x's strides: element i of memory maps to element i
  // Keep iff bits >= threshold: P(keep) = 1 - threshold / 2^32 = 1 - p up to 2^-32.
  const auto threshold = static_cast<uint32_t>(std::min(std::ldexp(p, 32), 4294967295.0));
  const auto s = static_cast<uint64_t>(seed);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "dropout_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const acc_t scale = acc_t(1) / acc_t(1.0 - p);
    at::parallel_for(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
      dropout_range(xp, yp, begin, end, s, threshold, scale);
    });
  });
  return y;
}

}  // namespace mmattn
