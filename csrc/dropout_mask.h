// The dropout mask as a function of (seed, memory index), shared by the CPU and CUDA kernels
// (host and device code; tested on the CPU through mmattn.dropout against the documented hash).
//
// Element i is kept iff bits(seed, i) >= threshold(p), so the backward regenerates the mask
// instead of storing it, every thread draws its own elements independently, and the CPU and
// CUDA kernels drop the same elements for the same seed.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "rs_index.h"  // MMATTN_HOST_DEVICE

namespace mmattn {

// SplitMix64's finaliser of seed + (i + 1) * golden ratio: the top 32 bits are uniform.
MMATTN_HOST_DEVICE uint32_t dropout_bits(uint64_t seed, uint64_t i) {
  uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return static_cast<uint32_t>((z ^ (z >> 31)) >> 32);
}

// P(bits >= threshold) = 1 - threshold / 2^32 = 1 - p up to 2^-32 (p in [0, 1)).
inline uint32_t dropout_threshold(double p) {
  return static_cast<uint32_t>(std::min(std::ldexp(p, 32), 4294967295.0));
}

MMATTN_HOST_DEVICE bool dropout_keeps(uint64_t seed, uint32_t threshold, uint64_t i) {
  return dropout_bits(seed, i) >= threshold;
}

// The factor 1 / (1 - p) kept elements are scaled by, in the accumulation type.
template <typename acc_t>
inline acc_t dropout_scale(double p) {
  return acc_t(1) / acc_t(1.0 - p);
}

// Output element i: x scaled in acc_t if kept, else zero. One expression for both kernels, so
// that they agree bitwise, not only on which elements they drop.
template <typename T, typename acc_t>
MMATTN_HOST_DEVICE T dropout_element(T x, uint64_t seed, uint32_t threshold, acc_t scale, uint64_t i) {
  return static_cast<T>(static_cast<acc_t>(x) * (dropout_keeps(seed, threshold, i) ? scale : acc_t(0)));
}

}  // namespace mmattn
