// CPU dropout with a counter-based mask (dropout_mask.h): the mask is a function of
// (seed, memory index) that the backward recomputes instead of storing it.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>

#include "block_cache.h"
#include "dropout_mask.h"
#include "ops.h"
#include "vec_math.h"

namespace mmattn {
namespace {

constexpr int64_t kGrain = 1 << 15;

template <typename T, typename acc_t>
MMATTN_INLINE void dropout_impl(const T* x, T* y, int64_t begin, int64_t end, uint64_t seed,
                                uint32_t threshold, acc_t scale) {
  for (int64_t i = begin; i < end; ++i) {
    y[i] = dropout_element(x[i], seed, threshold, scale, static_cast<uint64_t>(i));
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
  // a non-dense x is copied in the layout empty_like(x) picks (the strides the fake kernel promises)
  const at::Tensor x =
      x_in.is_non_overlapping_and_dense() ? x_in : x_in.contiguous(x_in.suggest_memory_format());
  at::Tensor y = empty_like_cached(x);  // x's strides: element i of memory maps to element i
  const uint32_t threshold = dropout_threshold(p);
  const auto s = static_cast<uint64_t>(seed);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "dropout_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const acc_t scale = dropout_scale<acc_t>(p);
    at::parallel_for(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
      dropout_range(xp, yp, begin, end, s, threshold, scale);
    });
  });
  return y;
}

}  // namespace mmattn
