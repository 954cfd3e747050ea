#pragma once
// GPU backend of weight normalization, w = g * v / ||v||, the norm over every dim but `dim`: a family
// small enough to keep its device code and its launches in one file, behind the glue of
// ops/weight_norm.h. v is viewed as (outer, slices, inner) and a block owns a slice: it reduces the
// slice's sum of squares (or, in the backward, the dot product of grad_w and v), then rescales the
// same elements, so the forward and the backward are one launch each. Consecutive threads read
// consecutive inner elements (coalesced for dim=0, the common case). Sums are deterministic (fixed
// block size and order).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <cstdint>

#include "common/cuda_block_sum.cuh"
#include "cuda/device_api.h"
#include "cuda/launch.h"
#include "ops/weight_norm.h"
#include "plans/weight_norm.h"

namespace norm_ext {
inline namespace NORM_EXT_GPU_NAMESPACE {

// ----- device code ----------------------------------------------------------------------------------

__device__ __forceinline__ int64_t slice_offset(int64_t j, int64_t d, int64_t slices, int64_t inner) {
  const int64_t o = j / inner;
  return (o * slices + d) * inner + (j - o * inner);
}

template <typename scalar_t, typename acc_t>
__global__ void weight_norm_forward_kernel(const scalar_t* __restrict__ v, const acc_t* __restrict__ g,
                                           scalar_t* __restrict__ w, acc_t* __restrict__ norm, int64_t per_slice,
                                           int64_t slices, int64_t inner) {
  NORM_EXT_SHARED(acc_t, scratch, [32]);
  for (int64_t d = blockIdx.x; d < slices; d += gridDim.x) {
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
}

// With s = g / n and c = sum(grad_w * v): grad_g = c / n, grad_v = s * grad_w - (s * c / n^2) * v.
template <typename scalar_t, typename acc_t>
__global__ void weight_norm_backward_kernel(const scalar_t* __restrict__ grad_w, const scalar_t* __restrict__ v,
                                            const acc_t* __restrict__ g, const acc_t* __restrict__ norm,
                                            scalar_t* __restrict__ grad_v, acc_t* __restrict__ grad_g,
                                            int64_t per_slice, int64_t slices, int64_t inner) {
  NORM_EXT_SHARED(acc_t, scratch, [32]);
  for (int64_t d = blockIdx.x; d < slices; d += gridDim.x) {
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
}

// ----- launches -------------------------------------------------------------------------------------

struct GpuWeightNorm {
  static constexpr c10::DeviceType kDevice = kGpuDeviceType;
  using Guard = DeviceGuard;

  static void forward(const WeightNormFwdCall& c) {
    const WeightNormShape& s = c.shape;
    const plans::LaunchShape shape =
        launch_shape(plans::plan_weight_norm_grid(s.slices, device_props()), plans::kWnThreads);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.v.scalar_type(), "weight_norm", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      launch(weight_norm_forward_kernel<scalar_t, acc_t>, shape, current_stream(), c.v.const_data_ptr<scalar_t>(),
             c.g.const_data_ptr<acc_t>(), c.w.mutable_data_ptr<scalar_t>(), c.norm.mutable_data_ptr<acc_t>(),
             s.outer * s.inner, s.slices, s.inner);
    });
  }

  static void backward(const WeightNormBwdCall& c) {
    const WeightNormShape& s = c.shape;
    const plans::LaunchShape shape =
        launch_shape(plans::plan_weight_norm_grid(s.slices, device_props()), plans::kWnThreads);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.v.scalar_type(), "weight_norm_backward", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      launch(weight_norm_backward_kernel<scalar_t, acc_t>, shape, current_stream(), c.grad_w.const_data_ptr<scalar_t>(),
             c.v.const_data_ptr<scalar_t>(), c.g.const_data_ptr<acc_t>(), c.norm.const_data_ptr<acc_t>(),
             c.grad_v.mutable_data_ptr<scalar_t>(), c.grad_g.mutable_data_ptr<acc_t>(), s.outer * s.inner, s.slices,
             s.inner);
    });
  }
};

}  // namespace NORM_EXT_GPU_NAMESPACE
}  // namespace norm_ext
