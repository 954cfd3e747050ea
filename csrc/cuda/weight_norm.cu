// CUDA kernels of weight normalization: w = g * v / ||v||, the norm over every dim but `dim`.
//
// v is viewed as (outer, slices, inner) and one block owns one slice: it reduces the slice's sum of
// squares (or, in the backward, the dot product of grad_w and v), then rescales the same elements, so
// the forward and the backward are one launch each. Consecutive threads read consecutive inner
// elements (coalesced for dim=0, the common case). Sums are deterministic (fixed block size and order).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/cuda_block_sum.cuh"
#include "common/reparam_checks.h"

namespace norm_ext {
namespace {

constexpr int kThreads = 512;

__device__ __forceinline__ int64_t slice_offset(int64_t j, int64_t d, int64_t slices, int64_t inner) {
  const int64_t o = j / inner;
  return (o * slices + d) * inner + (j - o * inner);
}

template <typename scalar_t, typename acc_t>
__global__ void weight_norm_forward_kernel(const scalar_t* __restrict__ v, const acc_t* __restrict__ g,
                                           scalar_t* __restrict__ w, acc_t* __restrict__ norm, int64_t per_slice,
                                           int64_t slices, int64_t inner) {
  __shared__ acc_t scratch[32];
  const int64_t d = blockIdx.x;
  acc_t sum_sq = 0;
  for (int64_t j = threadIdx.x; j < per_slice; j += blockDim.x) {
    const acc_t x = static_cast<acc_t>(v[slice_offset(j, d, slices, inner)]);
    sum_sq += x * x;
  }
  const acc_t n = sqrt(block_sum(sum_sq, scratch));
  if (threadIdx.x == 0) norm[d] = n;
  const acc_t factor = g[d] / n;
  for (int64_t j = threadIdx.x; j < per_slice; j += blockDim.x) {
    const int64_t idx = slice_offset(j, d, slices, inner);
    w[idx] = static_cast<scalar_t>(factor * static_cast<acc_t>(v[idx]));
  }
}

// With s = g / n and c = sum(grad_w * v): grad_g = c / n, grad_v = s * grad_w - (s * c / n^2) * v.
template <typename scalar_t, typename acc_t>
__global__ void weight_norm_backward_kernel(const scalar_t* __restrict__ grad_w, const scalar_t* __restrict__ v,
                                            const acc_t* __restrict__ g, const acc_t* __restrict__ norm,
                                            scalar_t* __restrict__ grad_v, acc_t* __restrict__ grad_g,
                                            int64_t per_slice, int64_t slices, int64_t inner) {
  __shared__ acc_t scratch[32];
  const int64_t d = blockIdx.x;
  acc_t dot = 0;
  for (int64_t j = threadIdx.x; j < per_slice; j += blockDim.x) {
    const int64_t idx = slice_offset(j, d, slices, inner);
    dot += static_cast<acc_t>(grad_w[idx]) * static_cast<acc_t>(v[idx]);
  }
  dot = block_sum(dot, scratch);
  const acc_t inv_n = acc_t(1) / norm[d];
  const acc_t alpha = g[d] * inv_n;
  const acc_t beta = alpha * dot * inv_n * inv_n;
  if (threadIdx.x == 0) grad_g[d] = dot * inv_n;
  for (int64_t j = threadIdx.x; j < per_slice; j += blockDim.x) {
    const int64_t idx = slice_offset(j, d, slices, inner);
    grad_v[idx] = static_cast<scalar_t>(alpha * static_cast<acc_t>(grad_w[idx]) - beta * static_cast<acc_t>(v[idx]));
  }
}

std::tuple<at::Tensor, at::Tensor> weight_norm_cuda(const at::Tensor& v_in, const at::Tensor& g,
                                                    std::optional<int64_t> dim) {
  constexpr const char* op = "norm_ext::weight_norm";
  const WeightNormShape shape = check_weight_norm_inputs(op, v_in, g, dim);
  TORCH_CHECK(v_in.is_cuda(), op, ": expected CUDA tensors, got v on ", v_in.device());
  const c10::cuda::CUDAGuard guard(v_in.device());
  const at::Tensor v = v_in.contiguous();
  const auto acc_type = acc_dtype_of(v);
  at::Tensor w = at::empty_like(v, at::MemoryFormat::Contiguous);
  at::Tensor norm = at::zeros(g.sizes(), v.options().dtype(acc_type));
  if (v.numel() == 0) return {w, norm};
  const at::Tensor g_acc = g.to(acc_type).contiguous();
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "weight_norm_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    weight_norm_forward_kernel<scalar_t, acc_t><<<shape.slices, kThreads, 0, stream>>>(
        v.const_data_ptr<scalar_t>(), g_acc.const_data_ptr<acc_t>(), w.mutable_data_ptr<scalar_t>(),
        norm.mutable_data_ptr<acc_t>(), shape.outer * shape.inner, shape.slices, shape.inner);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {w, norm};
}

std::tuple<at::Tensor, at::Tensor> weight_norm_backward_cuda(const at::Tensor& grad_w_in, const at::Tensor& v_in,
                                                             const at::Tensor& g, const at::Tensor& norm_in,
                                                             std::optional<int64_t> dim) {
  constexpr const char* op = "norm_ext::weight_norm_backward";
  const WeightNormShape shape = check_weight_norm_inputs(op, v_in, g, dim);
  check_weight_norm_backward_inputs(op, grad_w_in, v_in, norm_in, shape);
  TORCH_CHECK(v_in.is_cuda(), op, ": expected CUDA tensors, got v on ", v_in.device());
  const c10::cuda::CUDAGuard guard(v_in.device());
  const at::Tensor v = v_in.contiguous();
  const at::Tensor grad_w = grad_w_in.contiguous();
  const auto acc_type = acc_dtype_of(v);
  at::Tensor grad_v = at::empty_like(v, at::MemoryFormat::Contiguous);
  if (v.numel() == 0) return {grad_v, at::zeros_like(g)};
  at::Tensor grad_g_acc = at::empty(g.sizes(), v.options().dtype(acc_type));
  const at::Tensor g_acc = g.to(acc_type).contiguous();
  const at::Tensor norm = norm_in.contiguous();
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "weight_norm_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    weight_norm_backward_kernel<scalar_t, acc_t><<<shape.slices, kThreads, 0, stream>>>(
        grad_w.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(), g_acc.const_data_ptr<acc_t>(),
        norm.const_data_ptr<acc_t>(), grad_v.mutable_data_ptr<scalar_t>(), grad_g_acc.mutable_data_ptr<acc_t>(),
        shape.outer * shape.inner, shape.slices, shape.inner);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_v, grad_g_acc.to(g.scalar_type())};
}

}  // namespace
}  // namespace norm_ext

TORCH_LIBRARY_IMPL(norm_ext, CUDA, m) {
  m.impl("weight_norm", &norm_ext::weight_norm_cuda);
  m.impl("weight_norm_backward", &norm_ext::weight_norm_backward_cuda);
}
