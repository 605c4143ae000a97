// CUDA entry points until the fused CUDA kernels land: a clear NotImplementedError.
// This translation unit proves that the CUDA build path compiles.
#include <ATen/ATen.h>

#include "ops.h"

namespace mmattn {
namespace {
[[noreturn]] void not_yet(const char* op) {
  TORCH_CHECK_NOT_IMPLEMENTED(false, "mmattn.", op,
                              ": the CUDA kernel is not implemented yet; move the inputs to the "
                              "CPU or use mmattn.reference");
}
}  // namespace

std::tuple<Tensor, Tensor> segment_attention_fwd_cuda(const Tensor&, const Tensor&, const Tensor&,
                                                      int64_t, int64_t, int64_t, double) {
  not_yet("rs_attention");
}
std::tuple<Tensor, Tensor, Tensor> segment_attention_bwd_cuda(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
    int64_t, int64_t, int64_t, double) {
  not_yet("rs_attention");
}
std::tuple<Tensor, Tensor, Tensor> group_norm_act_fwd_cuda(
    const Tensor&, int64_t, const OptTensor&, const OptTensor&, const OptTensor&,
    const OptTensor&, bool, double, int64_t) {
  not_yet("group_norm_act");
}
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> group_norm_act_bwd_cuda(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, int64_t, const OptTensor&,
    const OptTensor&, const OptTensor&, const OptTensor&, bool, int64_t) {
  not_yet("group_norm_act");
}

}  // namespace mmattn
