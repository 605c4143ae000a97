// Argument checks of the CUDA entry points, compiled by the host compiler (checks.cpp).
//
// They live outside the .cu files on purpose: on the H200 machine (torch 2.11, nvcc 13.0) a
// c10 error whose message streams a number, raised from nvcc-compiled host code, killed the
// process with a segmentation fault instead of raising; the same checks raise cleanly from
// host-compiled code. Checks that stay in .cu files use literal messages only.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace mmattn::cuda {

// q [B, H, n_q, D], k and v [B, H, n_k, D] on one CUDA device, one float dtype; 1 <= window <=
// segments <= n_q, n_k; and the limits of the CUDA kernels (D, B * H, token counts).
void check_segment_attention_args(const char* op, const at::Tensor& q, const at::Tensor& k,
                                  const at::Tensor& v, int64_t segments, int64_t window);

// The extra inputs of the backward pass: grad_out and out like q, lse [B, H, n_q] in float32
// (float64 for float64 q).
void check_segment_attention_bwd_args(const at::Tensor& grad_out, const at::Tensor& out,
                                      const at::Tensor& lse, const at::Tensor& q);

}  // namespace mmattn::cuda
