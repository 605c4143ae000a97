#include "checks.h"

#include <c10/util/Exception.h>

namespace mmattn {

void check_segment_attention(const char* op, const at::Tensor& q, const at::Tensor& k,
                             const at::Tensor& v, int64_t segments, int64_t window) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, op,
              ": q, k, v must be 4-D [B, H, N, D]");
  TORCH_CHECK(k.device() == q.device() && v.device() == q.device(), op,
              ": q, k, v must be on one device");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), op,
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
}

void check_segment_attention_grads(const char* op, const at::Tensor& grad_out, const at::Tensor& q,
                                   const at::Tensor& out, const at::Tensor& lse) {
  for (const at::Tensor* t : {&grad_out, &out}) {
    TORCH_CHECK(t->sizes() == q.sizes() && t->scalar_type() == q.scalar_type() &&
                    t->device() == q.device(),
                op, ": grad_out and out must match q in shape, dtype and device");
  }
  const at::ScalarType stats = stats_dtype(q.scalar_type());
  TORCH_CHECK(lse.scalar_type() == stats && lse.device() == q.device() &&
                  lse.sizes() == q.sizes().slice(0, 3),
              op, ": lse must be [B, H, n_q] ", stats, " on q's device");
}

void check_group_norm(const char* op, const at::Tensor& x, int64_t groups, int64_t channel_dim,
                      const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                      const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift) {
  TORCH_CHECK(channel_dim == 1 || channel_dim == 2, op, ": channel_dim must be 1 or 2");
  TORCH_CHECK(x.dim() >= channel_dim + 1, op, ": x has too few dims");
  const int64_t channels = x.size(channel_dim);
  TORCH_CHECK(groups >= 1 && channels % groups == 0, op, ": channels must be divisible by num_groups");
  for (const auto* p : {&weight, &bias}) {
    TORCH_CHECK(!p->has_value() || !(*p)->defined() || ((*p)->dim() == 1 && (*p)->size(0) == channels), op,
                ": weight and bias must be [C] with C = ", channels);
  }
  for (const auto* p : {&scale, &shift}) {
    TORCH_CHECK(!p->has_value() || !(*p)->defined() ||
                    ((*p)->dim() == 2 && (*p)->size(0) == x.size(0) && (*p)->size(1) == channels),
                op, ": scale and shift must be [B, C] = [", x.size(0), ", ", channels, "]");
  }
  for (const auto* p : {&weight, &bias, &scale, &shift}) {
    TORCH_CHECK(!p->has_value() || !(*p)->defined() || (*p)->device() == x.device(), op,
                ": weight, bias, scale and shift must be on x's device");
  }
}

void check_group_norm_grads(const char* op, const at::Tensor& grad_y, const at::Tensor& x,
                            const at::Tensor& mean, const at::Tensor& rstd, int64_t groups) {
  TORCH_CHECK(grad_y.sizes() == x.sizes() && grad_y.scalar_type() == x.scalar_type() &&
                  grad_y.device() == x.device(),
              op, ": grad_y must match x in shape, dtype and device");
  const at::ScalarType stats = stats_dtype(x.scalar_type());
  const int64_t n = x.size(0) * groups;
  TORCH_CHECK(mean.scalar_type() == stats && rstd.scalar_type() == stats && mean.numel() == n &&
                  rstd.numel() == n && mean.device() == x.device() && rstd.device() == x.device(),
              op, ": mean and rstd must be [B, G] ", stats, " on x's device");
}

}  // namespace mmattn
