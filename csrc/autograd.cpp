// Autograd kernels of the mmattn operators, in C++ (the Autograd dispatch key).
//
// Each forward redispatches below autograd to the device kernel (or, under torch.compile's
// fake tensors, to the fake kernel registered in mmattn/functional.py), saves what the backward
// operator needs and marks the statistics outputs non-differentiable; each backward is one call
// of the backward operator. Gradients are not materialised: autograd would otherwise fill a zero
// tensor for every statistics output (two per GroupNorm), a kernel launch each on a GPU.
// Registered in Python (torch.library.register_autograd) the same logic cost about 200 us of
// host time per forward+backward on this project's CPU, three times the operators' own
// dispatch: a GPU training step of the paper-64 U-Net makes ~250 such calls and is bound by its
// host time.
#include <torch/autograd.h>
#include <torch/library.h>

#include "ops.h"

namespace mmattn {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The operator's typed handle: calls dispatch below autograd inside an AutoDispatchBelowADInplaceOrView.
template <typename Signature>
c10::TypedOperatorHandle<Signature> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

Tensor or_undefined(const OptTensor& t) { return t.has_value() ? *t : Tensor(); }
OptTensor as_optional(const Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

// ------------------------------------------------------------------------- segment attention

class SegmentAttention : public torch::autograd::Function<SegmentAttention> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& q, const Tensor& k,
                               const Tensor& v, int64_t segments, int64_t window, int64_t shift,
                               double scale) {
    static const auto fwd = op_handle<decltype(segment_attention_fwd_cpu)>("mmattn::segment_attention_fwd");
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, lse] = fwd.call(q, k, v, segments, window, shift, scale);
    ctx->save_for_backward({q, k, v, out, lse});
    ctx->saved_data["segments"] = segments;
    ctx->saved_data["window"] = window;
    ctx->saved_data["shift"] = shift;
    ctx->saved_data["scale"] = scale;
    ctx->mark_non_differentiable({lse});
    ctx->set_materialize_grads(false);  // lse has no gradient: no zero tensor for it
    return {out, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto bwd = op_handle<decltype(segment_attention_bwd_cpu)>("mmattn::segment_attention_bwd");
    const variable_list saved = ctx->get_saved_variables();
    const Tensor& grad_out = grads[0];
    if (!grad_out.defined()) return variable_list(7);
    auto [dq, dk, dv] = bwd.call(grad_out, saved[0], saved[1], saved[2], saved[3], saved[4],
                                 ctx->saved_data["segments"].toInt(), ctx->saved_data["window"].toInt(),
                                 ctx->saved_data["shift"].toInt(), ctx->saved_data["scale"].toDouble());
    return {dq, dk, dv, Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

std::tuple<Tensor, Tensor> segment_attention_fwd_autograd(
    const Tensor& q, const Tensor& k, const Tensor& v, int64_t segments, int64_t window,
    int64_t shift, double scale) {
  const variable_list out = SegmentAttention::apply(q, k, v, segments, window, shift, scale);
  return {out[0], out[1]};
}

// ------------------------------------------------------------ GroupNorm + affine + FiLM + SiLU

class GroupNormAct : public torch::autograd::Function<GroupNormAct> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& x, int64_t num_groups,
                               const OptTensor& weight, const OptTensor& bias,
                               const OptTensor& scale, const OptTensor& shift, bool silu,
                               double eps, int64_t channel_dim) {
    static const auto fwd = op_handle<decltype(group_norm_act_fwd_cpu)>("mmattn::group_norm_act_fwd");
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [y, mean, rstd] = fwd.call(x, num_groups, weight, bias, scale, shift, silu, eps, channel_dim);
    ctx->save_for_backward({x, mean, rstd, or_undefined(weight), or_undefined(bias),
                            or_undefined(scale), or_undefined(shift)});
    ctx->saved_data["num_groups"] = num_groups;
    ctx->saved_data["silu"] = silu;
    ctx->saved_data["channel_dim"] = channel_dim;
    ctx->mark_non_differentiable({mean, rstd});
    ctx->set_materialize_grads(false);  // mean and rstd have none: no zero tensors for them
    return {y, mean, rstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto bwd = op_handle<decltype(group_norm_act_bwd_cpu)>("mmattn::group_norm_act_bwd");
    const variable_list s = ctx->get_saved_variables();
    const Tensor& grad_y = grads[0];
    if (!grad_y.defined()) return variable_list(9);
    auto [dx, dw, db, dscale, dshift] = bwd.call(
        grad_y, s[0], s[1], s[2], ctx->saved_data["num_groups"].toInt(), as_optional(s[3]),
        as_optional(s[4]), as_optional(s[5]), as_optional(s[6]), ctx->saved_data["silu"].toBool(),
        ctx->saved_data["channel_dim"].toInt());
    const auto present = [&](int i, const Tensor& g) { return s[i].defined() ? g : Tensor(); };
    return {dx, Tensor(), present(3, dw), present(4, db), present(5, dscale), present(6, dshift),
            Tensor(), Tensor(), Tensor()};
  }
};

std::tuple<Tensor, Tensor, Tensor> group_norm_act_fwd_autograd(
    const Tensor& x, int64_t num_groups, const OptTensor& weight, const OptTensor& bias,
    const OptTensor& scale, const OptTensor& shift, bool silu, double eps, int64_t channel_dim) {
  const variable_list out =
      GroupNormAct::apply(x, num_groups, weight, bias, scale, shift, silu, eps, channel_dim);
  return {out[0], out[1], out[2]};
}

// ------------------------------------------------------------------------------------ dropout

class Dropout : public torch::autograd::Function<Dropout> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& x, double p, int64_t seed) {
    static const auto op = op_handle<decltype(dropout_cpu)>("mmattn::dropout");
    at::AutoDispatchBelowADInplaceOrView guard;
    Tensor y = op.call(x, p, seed);
    ctx->saved_data["p"] = p;
    ctx->saved_data["seed"] = seed;
    ctx->saved_data["sizes"] = y.sizes().vec();
    ctx->saved_data["strides"] = y.strides().vec();
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = op_handle<decltype(dropout_cpu)>("mmattn::dropout");
    Tensor grad = grads[0];
    if (!grad.defined()) return variable_list(3);
    // the mask is indexed by memory position: give the gradient y's strides
    const std::vector<int64_t> sizes = ctx->saved_data["sizes"].toIntVector();
    const std::vector<int64_t> strides = ctx->saved_data["strides"].toIntVector();
    if (grad.strides() != c10::IntArrayRef(strides)) {
      grad = at::empty_strided(sizes, strides, grad.options()).copy_(grad);
    }
    return {op.call(grad, ctx->saved_data["p"].toDouble(), ctx->saved_data["seed"].toInt()),
            Tensor(), Tensor()};
  }
};

Tensor dropout_autograd(const Tensor& x, double p, int64_t seed) { return Dropout::apply(x, p, seed); }

}  // namespace

TORCH_LIBRARY_IMPL(mmattn, Autograd, m) {
  m.impl("segment_attention_fwd", &segment_attention_fwd_autograd);
  m.impl("group_norm_act_fwd", &group_norm_act_fwd_autograd);
  m.impl("dropout", &dropout_autograd);
}

}  // namespace mmattn
