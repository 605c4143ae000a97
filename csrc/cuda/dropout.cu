// CUDA dropout with the counter-based mask of dropout_mask.h: the same elements as the CPU
// kernel for the same seed, and nothing stored for the backward (which is this op on grad_y).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "device_utils.cuh"
#include "dropout_mask.h"
#include "ops.h"

namespace mmattn {
namespace cuda {
namespace {

constexpr int kThreads = 256;

// y[i] = dropout_element(x[i], ...) over the memory of dense x and y, grid-stride.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) dropout_kernel(
    const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int64_t n, uint64_t seed,
    uint32_t threshold, acc_t scale) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    y[i] = dropout_element(x[i], seed, threshold, scale, static_cast<uint64_t>(i));
  }
}

}  // namespace
}  // namespace cuda

at::Tensor dropout_cuda(const at::Tensor& x_in, double p, int64_t seed) {
  using namespace cuda;
  TORCH_CHECK(p >= 0.0 && p < 1.0, "dropout: p must be in [0, 1), got ", p);
  const c10::cuda::CUDAGuard guard(x_in.device());
  // a non-dense x is copied in the layout empty_like(x) picks (the strides the fake kernel promises)
  const at::Tensor x =
      x_in.is_non_overlapping_and_dense() ? x_in : x_in.contiguous(x_in.suggest_memory_format());
  at::Tensor y = at::empty_like(x);  // x's strides: element i of memory maps to element i
  const int64_t n = x.numel();
  if (n == 0) return y;
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, x.get_device()));
  const int64_t blocks = std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t{sms} * 8);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_floating(x.scalar_type(), "dropout", [&](auto zero) {
    using scalar_t = decltype(zero);
    using acc_t = acc_type<scalar_t>;
    dropout_kernel<scalar_t, acc_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), n, static_cast<uint64_t>(seed),
        dropout_threshold(p), dropout_scale<acc_t>(p));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

}  // namespace mmattn
