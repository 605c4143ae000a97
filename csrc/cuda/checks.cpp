// Argument checks of the CUDA entry points; see checks.h for why they are host-compiled.
#include "checks.h"

#include <c10/util/Exception.h>

#include "rs_index.h"

namespace mmattn::cuda {

void check_segment_attention_args(const char* op, const at::Tensor& q, const at::Tensor& k,
                                  const at::Tensor& v, int64_t segments, int64_t window) {
  TORCH_CHECK(q.is_cuda() && k.is_cuda() && v.is_cuda(), op, ": q, k, v must be CUDA tensors");
  TORCH_CHECK(k.device() == q.device() && v.device() == q.device(), op,
              ": q, k, v must be on one device");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, op,
              ": q, k, v must be 4-D [B, H, N, D]");
  const auto dtype = q.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16 ||
                       dtype == at::kHalf,
                   op, ": q must be float32, float64, bfloat16 or float16, got ", dtype);
  TORCH_CHECK(k.scalar_type() == dtype && v.scalar_type() == dtype, op,
              ": q, k, v must share one dtype");
  TORCH_CHECK(k.size(0) == q.size(0) && k.size(1) == q.size(1) && k.size(3) == q.size(3) &&
                  v.sizes() == k.sizes(),
              op, ": q [B, H, n_q, D], k and v [B, H, n_k, D] must agree, got ", q.sizes(), ", ",
              k.sizes(), ", ", v.sizes());
  TORCH_CHECK(segments >= 1 && window >= 1 && window <= segments, op,
              ": need 1 <= window <= segments, got window=", window, ", segments=", segments);
  TORCH_CHECK(q.size(2) >= segments && k.size(2) >= segments, op,
              ": every segment needs a token (n_q=", q.size(2), ", n_k=", k.size(2),
              ", segments=", segments, ")");
  TORCH_CHECK(q.size(2) < (int64_t{1} << 30) && k.size(2) < (int64_t{1} << 30), op,
              ": n_q and n_k must be < 2^30 on CUDA");
  TORCH_CHECK(q.size(0) * q.size(1) <= 65535, op, ": B * H must be <= 65535 on CUDA, got ",
              q.size(0) * q.size(1));
  TORCH_CHECK_VALUE(q.size(3) >= 1 && q.size(3) <= kCudaMaxHeadDim, op, ": head_dim D=",
                    q.size(3), " is not supported on CUDA (need 1 <= D <= ", kCudaMaxHeadDim,
                    "; the tensor-core kernels take D = 32, 64, 128)");
}

void check_segment_attention_bwd_args(const at::Tensor& grad_out, const at::Tensor& out,
                                      const at::Tensor& lse, const at::Tensor& q) {
  TORCH_CHECK(grad_out.sizes() == q.sizes() && out.sizes() == q.sizes() &&
                  grad_out.scalar_type() == q.scalar_type() &&
                  out.scalar_type() == q.scalar_type() && grad_out.device() == q.device() &&
                  out.device() == q.device(),
              "segment_attention_bwd: grad_out and out must match q in shape, dtype and device");
  const auto stats = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(lse.scalar_type() == stats && lse.device() == q.device() &&
                  lse.sizes() == q.sizes().slice(0, 3),
              "segment_attention_bwd: lse must be [B, H, n_q] ", stats, " on q's device, got ",
              lse.sizes(), " ", lse.scalar_type());
}

}  // namespace mmattn::cuda
