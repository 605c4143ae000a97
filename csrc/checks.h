// Argument checks shared by the CPU and CUDA entry points: a direct torch.ops.mmattn call with
// inconsistent arguments raises instead of reading out of bounds. The Python functions check
// the same (and more, with ValueErrors) before they call the ops. Device-specific limits (CUDA:
// token counts, B * H, head_dim) stay with each device's entry point.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace mmattn {

// Softmax and normalisation statistics: float64 for float64 inputs, else float32.
inline at::ScalarType stats_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// q [B, H, n_q, D], k and v [B, H, n_k, D] on one device in one dtype; 1 <= window <= segments
// and at least one token per segment.
void check_segment_attention(const char* op, const at::Tensor& q, const at::Tensor& k,
                             const at::Tensor& v, int64_t segments, int64_t window);
// The backward's extra inputs: grad_out and out like q, lse [B, H, n_q] in stats_dtype.
void check_segment_attention_grads(const char* op, const at::Tensor& grad_out, const at::Tensor& q,
                                   const at::Tensor& out, const at::Tensor& lse);

// x [B, C, *S] (channel_dim 1) or [B, F, C, *S] (channel_dim 2) with C % groups == 0; weight
// and bias [C], scale and shift [B, C], all on x's device.
void check_group_norm(const char* op, const at::Tensor& x, int64_t groups, int64_t channel_dim,
                      const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                      const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift);
// The backward's extra inputs: grad_y like x, mean and rstd of B * groups stats_dtype values.
void check_group_norm_grads(const char* op, const at::Tensor& grad_y, const at::Tensor& x,
                            const at::Tensor& mean, const at::Tensor& rstd, int64_t groups);

}  // namespace mmattn
