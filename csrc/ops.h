// Operator entry points of mmattn._C, one per (operator, device). Schemas: ops.cpp.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Optional.h>

#include <array>
#include <tuple>

#include "cpu/block_cache.h"

namespace mmattn {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// Segment attention: the n_q query tokens and n_k key tokens are each cut into `segments`
// balanced segments; query segment i attends to key segments (i + shift + k) mod segments,
// k < window. q: [B, H, n_q, D], k/v: [B, H, n_k, D]. Returns (out [B, H, n_q, D],
// lse [B, H, n_q] in float32, float64 for float64 inputs). rs_attention is two such calls.
std::tuple<Tensor, Tensor> segment_attention_fwd_cpu(
    const Tensor& q, const Tensor& k, const Tensor& v, int64_t segments, int64_t window,
    int64_t shift, double scale);
std::tuple<Tensor, Tensor, Tensor> segment_attention_bwd_cpu(
    const Tensor& grad_out, const Tensor& q, const Tensor& k, const Tensor& v,
    const Tensor& out, const Tensor& lse, int64_t segments, int64_t window, int64_t shift,
    double scale);

// The layout of segment attention's outputs and gradients, of t's shape [B, H, N, D]: t's
// strides when t is dense (as empty_like keeps them), else token-major ([B, N, H, D] memory).
// Heads split off a q/k/v projection `[B, N, 3*H*D]` are not dense: their outputs and
// gradients then merge back into `[B, N, H*D]` channels as views, with no copy. CPU memory
// comes from the block cache (cpu/block_cache.h).
inline Tensor empty_rows_like(const Tensor& t) {
  const bool cpu = t.is_cpu();
  if (t.is_non_overlapping_and_dense()) return cpu ? empty_like_cached(t) : at::empty_like(t);
  const std::array<int64_t, 4> token_major{t.size(0), t.size(2), t.size(1), t.size(3)};
  return (cpu ? empty_cached(token_major, t.options()) : at::empty(token_major, t.options())).transpose(1, 2);
}

// GroupNorm + affine + FiLM + SiLU over x = [B, C, *S] (channel_dim 1) or [B, F, C, *S]
// (channel_dim 2). Returns (y, mean [B, G], rstd [B, G]).
std::tuple<Tensor, Tensor, Tensor> group_norm_act_fwd_cpu(
    const Tensor& x, int64_t num_groups, const OptTensor& weight, const OptTensor& bias,
    const OptTensor& scale, const OptTensor& shift, bool silu, double eps, int64_t channel_dim);
// Returns (grad_x, grad_weight [C], grad_bias [C], grad_scale [B, C], grad_shift [B, C]).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> group_norm_act_bwd_cpu(
    const Tensor& grad_y, const Tensor& x, const Tensor& mean, const Tensor& rstd,
    int64_t num_groups, const OptTensor& weight, const OptTensor& bias, const OptTensor& scale,
    const OptTensor& shift, bool silu, int64_t channel_dim);

// Dropout with a counter-based mask (dropout_mask.h): element i of the memory of x (dense;
// else a copy in the layout empty_like(x) picks) is zeroed iff bits(seed, i) < p * 2^32, else scaled by 1 / (1 - p).
// Returns y with x's strides. The mask is a function of (seed, index): the backward is this op
// on grad_y, and the CPU and CUDA kernels drop the same elements.
Tensor dropout_cpu(const Tensor& x, double p, int64_t seed);

// 'Same' 3x3 convolution, stride 1, zero padding 1 (CPU only, float32/float64; Winograd
// F(4x4, 3x3), cpu/conv3x3_cpu.cpp): x [N, C, H, W], weight [O, C, 3, 3], bias [O] ->
// y [N, O, H, W] channels-last. The weight gradient [O, C, 3, 3] of the same convolution.
Tensor conv3x3_same_cpu(const Tensor& x, const Tensor& weight, const OptTensor& bias);
Tensor conv3x3_same_weight_grad_cpu(const Tensor& grad_y, const Tensor& x);

#ifdef MMATTN_WITH_CUDA
std::tuple<Tensor, Tensor> segment_attention_fwd_cuda(
    const Tensor& q, const Tensor& k, const Tensor& v, int64_t segments, int64_t window,
    int64_t shift, double scale);
std::tuple<Tensor, Tensor, Tensor> segment_attention_bwd_cuda(
    const Tensor& grad_out, const Tensor& q, const Tensor& k, const Tensor& v,
    const Tensor& out, const Tensor& lse, int64_t segments, int64_t window, int64_t shift,
    double scale);
std::tuple<Tensor, Tensor, Tensor> group_norm_act_fwd_cuda(
    const Tensor& x, int64_t num_groups, const OptTensor& weight, const OptTensor& bias,
    const OptTensor& scale, const OptTensor& shift, bool silu, double eps, int64_t channel_dim);
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> group_norm_act_bwd_cuda(
    const Tensor& grad_y, const Tensor& x, const Tensor& mean, const Tensor& rstd,
    int64_t num_groups, const OptTensor& weight, const OptTensor& bias, const OptTensor& scale,
    const OptTensor& shift, bool silu, int64_t channel_dim);
Tensor dropout_cuda(const Tensor& x, double p, int64_t seed);
#endif

}  // namespace mmattn
