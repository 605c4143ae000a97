// The [B, F, C, S] view of a GroupNorm input, shared by the CPU and CUDA kernels (host code).
//
// x is [B, C, *S] (channel_dim 1, F = 1) or [B, F, C, *S] (channel_dim 2); S flattens the
// spatial dims, which works for contiguous, channels_last and frames-major layouts alike.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace mmattn {

struct NormLayout {
  int64_t batch, frames, channels, spatial;
  int64_t sb, sf, sc, ss;  // strides of B, F, C, S
};

// Strides of the [B, F, C, S] view of `t`, or nullopt when the spatial dims cannot be
// flattened into one stride.
inline std::optional<NormLayout> layout_of(const at::Tensor& t, int64_t channel_dim) {
  NormLayout l{};
  l.batch = t.size(0);
  l.frames = channel_dim == 2 ? t.size(1) : 1;
  l.channels = t.size(channel_dim);
  l.sb = t.stride(0);
  l.sf = channel_dim == 2 ? t.stride(1) : 0;
  l.sc = t.stride(channel_dim);
  l.spatial = 1;
  l.ss = 1;
  bool first = true;
  for (int64_t dim = t.dim() - 1; dim > channel_dim; --dim) {  // innermost spatial dim first
    if (t.size(dim) == 1) continue;
    if (first) {
      l.ss = t.stride(dim);
      first = false;
    } else if (t.stride(dim) != l.spatial * l.ss) {
      return std::nullopt;
    }
    l.spatial *= t.size(dim);
  }
  return l;
}

// `t` itself when dense with flattenable spatial dims (then empty_like(t) has its strides),
// else a contiguous copy.
inline at::Tensor flattenable(const at::Tensor& t, int64_t channel_dim) {
  return t.is_non_overlapping_and_dense() && layout_of(t, channel_dim) ? t : t.contiguous();
}

}  // namespace mmattn
