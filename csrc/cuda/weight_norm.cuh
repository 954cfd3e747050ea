#pragma once
// GPU backend of weight normalization, w = g * v / ||v||, the norm over every dim but `dim`: a family
// small enough to keep its device code and its launches in one file, behind the glue of
// ops/weight_norm.h. v is viewed as (outer, slices, inner) and cut into (slice, chunk) items as
// plans/weight_norm.h says. Two launches each way: the first stores per item the sum of a * b over
// its chunk (a = v and b null for v * v forward, a = grad_w and b = v backward), the second merges its slice's partials
// with one value per thread and a block sum (the same bits in every block of the slice, whatever the
// chunking of the other slices) and rescales its chunk. Consecutive threads read consecutive inner
// elements; slices short inside (dim the last) are read across, in the plan's column view.

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

using plans::kWnLanes;
using plans::kWnRowLanes;

// ----- device code ----------------------------------------------------------------------------------

__device__ __forceinline__ int64_t slice_offset(int64_t j, int64_t d, int64_t slices, int64_t inner) {
  const int64_t o = j / inner;
  return (o * slices + d) * inner + (j - o * inner);
}

struct WeightNormGeometry {
  int64_t per_slice;
  int64_t slices;
  int64_t inner;
  int64_t chunks;
  int64_t chunk_len;
  int64_t outer;  // the column view's rows
  int64_t tiles;  // the column view's tiles of kWnLanes columns
};

__device__ __forceinline__ int64_t chunk_stop(const WeightNormGeometry& s, int64_t begin) {
  return begin + s.chunk_len < s.per_slice ? begin + s.chunk_len : s.per_slice;
}

template <typename scalar_t, typename acc_t>
__global__ void weight_norm_partial_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                                           WeightNormGeometry s, acc_t* __restrict__ partials) {
  NORM_EXT_SHARED(acc_t, scratch, [32]);
  for (int64_t item = blockIdx.x; item < s.slices * s.chunks; item += gridDim.x) {
    const int64_t d = item / s.chunks;
    const int64_t begin = item % s.chunks * s.chunk_len;
    const int64_t stop = chunk_stop(s, begin);
    acc_t sum = 0;
    for (int64_t j = begin + threadIdx.x; j < stop; j += blockDim.x) {
      const int64_t idx = slice_offset(j, d, s.slices, s.inner);
      const acc_t av = static_cast<acc_t>(a[idx]);
      sum += av * (b != nullptr ? static_cast<acc_t>(b[idx]) : av);
    }
    sum = block_sum(sum, scratch);
    if (threadIdx.x == 0) partials[item] = sum;
  }
}

// Slice d's total of its partials; every thread of the block gets it.
template <typename acc_t>
__device__ __forceinline__ acc_t slice_total(const acc_t* partials, const WeightNormGeometry& s, int64_t d,
                                             acc_t* scratch) {
  return block_sum(threadIdx.x < s.chunks ? partials[d * s.chunks + threadIdx.x] : acc_t(0), scratch);
}

template <typename scalar_t, typename acc_t>
__global__ void weight_norm_scale_kernel(const scalar_t* __restrict__ v, const acc_t* __restrict__ g,
                                         const acc_t* __restrict__ sum_sq, WeightNormGeometry s,
                                         scalar_t* __restrict__ w, acc_t* __restrict__ norm) {
  NORM_EXT_SHARED(acc_t, scratch, [32]);
  for (int64_t item = blockIdx.x; item < s.slices * s.chunks; item += gridDim.x) {
    const int64_t d = item / s.chunks;
    const int64_t begin = item % s.chunks * s.chunk_len;
    const acc_t n = sqrt(slice_total(sum_sq, s, d, scratch));
    if (threadIdx.x == 0 && begin == 0) norm[d] = n;
    const acc_t factor = g[d] / n;
    for (int64_t j = begin + threadIdx.x; j < chunk_stop(s, begin); j += blockDim.x) {
      const int64_t idx = slice_offset(j, d, s.slices, s.inner);
      w[idx] = static_cast<scalar_t>(factor * static_cast<acc_t>(v[idx]));
    }
  }
}

// With s = g / n and c = sum(grad_w * v): grad_g = c / n, grad_v = s * grad_w - (s * c / n^2) * v.
template <typename scalar_t, typename acc_t>
__global__ void weight_norm_grad_kernel(const scalar_t* __restrict__ grad_w, const scalar_t* __restrict__ v,
                                        const acc_t* __restrict__ g, const acc_t* __restrict__ norm,
                                        const acc_t* __restrict__ dots, WeightNormGeometry s,
                                        scalar_t* __restrict__ grad_v, acc_t* __restrict__ grad_g) {
  NORM_EXT_SHARED(acc_t, scratch, [32]);
  for (int64_t item = blockIdx.x; item < s.slices * s.chunks; item += gridDim.x) {
    const int64_t d = item / s.chunks;
    const int64_t begin = item % s.chunks * s.chunk_len;
    const acc_t dot = slice_total(dots, s, d, scratch);
    const acc_t inv_n = acc_t(1) / norm[d];
    const acc_t alpha = g[d] * inv_n;
    const acc_t beta = alpha * dot * inv_n * inv_n;
    if (threadIdx.x == 0 && begin == 0) grad_g[d] = dot * inv_n;
    for (int64_t j = begin + threadIdx.x; j < chunk_stop(s, begin); j += blockDim.x) {
      const int64_t idx = slice_offset(j, d, s.slices, s.inner);
      grad_v[idx] = static_cast<scalar_t>(alpha * static_cast<acc_t>(grad_w[idx]) - beta * static_cast<acc_t>(v[idx]));
    }
  }
}

// The column view (plans/weight_norm.h): item (chunk, tile) gives thread (lane, row lane) column
// tile * kWnLanes + lane of the (outer, slices * inner) matrix, and rows row lane, + kWnRowLanes, ...
// of the chunk.
struct ColumnSlot {
  int64_t col;
  int64_t chunk;
  int64_t row_begin;
  int64_t row_end;
  bool active;
};

__device__ __forceinline__ ColumnSlot column_slot(const WeightNormGeometry& s, int64_t item) {
  const int64_t tile = item % s.tiles, chunk = item / s.tiles;
  const int64_t col = tile * kWnLanes + threadIdx.x % kWnLanes;
  const int64_t end = (chunk + 1) * s.chunk_len;
  return {col, chunk, chunk * s.chunk_len + threadIdx.x / kWnLanes, end < s.outer ? end : s.outer,
          col < s.slices * s.inner};
}

// partials[chunk][col] = sum over the chunk's rows of a * b (a * a when b is null).
template <typename scalar_t, typename acc_t>
__global__ void weight_norm_partial_columns_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                                                   WeightNormGeometry s, acc_t* __restrict__ partials) {
  NORM_EXT_SHARED(acc_t, sums, [kWnRowLanes][kWnLanes]);
  const int64_t cols = s.slices * s.inner;
  for (int64_t item = blockIdx.x; item < s.tiles * s.chunks; item += gridDim.x) {
    const ColumnSlot c = column_slot(s, item);
    acc_t sum = 0;
    if (c.active) {
      for (int64_t r = c.row_begin; r < c.row_end; r += kWnRowLanes) {
        const acc_t av = static_cast<acc_t>(a[r * cols + c.col]);
        sum += av * (b != nullptr ? static_cast<acc_t>(b[r * cols + c.col]) : av);
      }
    }
    sums[threadIdx.x / kWnLanes][threadIdx.x % kWnLanes] = sum;
    __syncthreads();
    if (threadIdx.x < kWnLanes && c.active) {
      acc_t total = 0;
      for (int k = 0; k < kWnRowLanes; ++k) total += sums[k][threadIdx.x];
      partials[c.chunk * cols + c.col] = total;
    }
    __syncthreads();
  }
}

// The total of slice d over its columns' partials, in an order fixed by indices.
template <typename acc_t>
__device__ __forceinline__ acc_t column_slice_total(const acc_t* partials, const WeightNormGeometry& s, int64_t d) {
  const int64_t cols = s.slices * s.inner;
  acc_t total = 0;
  for (int64_t chunk = 0; chunk < s.chunks; ++chunk) {
    for (int64_t i = 0; i < s.inner; ++i) total += partials[chunk * cols + d * s.inner + i];
  }
  return total;
}

template <typename scalar_t, typename acc_t>
__global__ void weight_norm_scale_columns_kernel(const scalar_t* __restrict__ v, const acc_t* __restrict__ g,
                                                 const acc_t* __restrict__ sum_sq, WeightNormGeometry s,
                                                 scalar_t* __restrict__ w, acc_t* __restrict__ norm) {
  NORM_EXT_SHARED(acc_t, factor, [kWnLanes]);
  const int64_t cols = s.slices * s.inner;
  for (int64_t item = blockIdx.x; item < s.tiles * s.chunks; item += gridDim.x) {
    const ColumnSlot c = column_slot(s, item);
    if (threadIdx.x < kWnLanes && c.active) {
      const int64_t d = c.col / s.inner;
      const acc_t n = sqrt(column_slice_total(sum_sq, s, d));
      if (c.chunk == 0 && c.col % s.inner == 0) norm[d] = n;
      factor[threadIdx.x] = g[d] / n;
    }
    __syncthreads();
    if (c.active) {
      const acc_t f = factor[threadIdx.x % kWnLanes];
      for (int64_t r = c.row_begin; r < c.row_end; r += kWnRowLanes) {
        w[r * cols + c.col] = static_cast<scalar_t>(f * static_cast<acc_t>(v[r * cols + c.col]));
      }
    }
    __syncthreads();
  }
}

// As weight_norm_grad_kernel, in the column view.
template <typename scalar_t, typename acc_t>
__global__ void weight_norm_grad_columns_kernel(const scalar_t* __restrict__ grad_w, const scalar_t* __restrict__ v,
                                                const acc_t* __restrict__ g, const acc_t* __restrict__ norm,
                                                const acc_t* __restrict__ dots, WeightNormGeometry s,
                                                scalar_t* __restrict__ grad_v, acc_t* __restrict__ grad_g) {
  NORM_EXT_SHARED(acc_t, coef, [2][kWnLanes]);
  const int64_t cols = s.slices * s.inner;
  for (int64_t item = blockIdx.x; item < s.tiles * s.chunks; item += gridDim.x) {
    const ColumnSlot c = column_slot(s, item);
    if (threadIdx.x < kWnLanes && c.active) {
      const int64_t d = c.col / s.inner;
      const acc_t dot = column_slice_total(dots, s, d);
      const acc_t inv_n = acc_t(1) / norm[d];
      const acc_t alpha = g[d] * inv_n;
      if (c.chunk == 0 && c.col % s.inner == 0) grad_g[d] = dot * inv_n;
      coef[0][threadIdx.x] = alpha;
      coef[1][threadIdx.x] = alpha * dot * inv_n * inv_n;
    }
    __syncthreads();
    if (c.active) {
      const acc_t alpha = coef[0][threadIdx.x % kWnLanes], beta = coef[1][threadIdx.x % kWnLanes];
      for (int64_t r = c.row_begin; r < c.row_end; r += kWnRowLanes) {
        const int64_t idx = r * cols + c.col;
        grad_v[idx] =
            static_cast<scalar_t>(alpha * static_cast<acc_t>(grad_w[idx]) - beta * static_cast<acc_t>(v[idx]));
      }
    }
    __syncthreads();
  }
}

// ----- launches -------------------------------------------------------------------------------------

inline WeightNormGeometry weight_norm_geometry(const WeightNormShape& s, const plans::WeightNormPlan& p) {
  return {s.outer * s.inner, s.slices, s.inner, p.chunks, p.chunk_len, s.outer, p.tiles};
}

inline plans::WeightNormPlan weight_norm_plan(const WeightNormShape& s) {
  return plans::plan_weight_norm(s.outer, s.slices, s.inner, device_props());
}

struct GpuWeightNorm {
  static constexpr c10::DeviceType kDevice = kGpuDeviceType;
  using Guard = DeviceGuard;

  static void forward(const WeightNormFwdCall& c) {
    const plans::WeightNormPlan plan = weight_norm_plan(c.shape);
    const WeightNormGeometry geo = weight_norm_geometry(c.shape, plan);
    const plans::LaunchShape shape = launch_shape(plan.grid, plans::kWnThreads);
    const Stream stream = current_stream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.v.scalar_type(), "weight_norm", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const at::Tensor sum_sq = at::empty({plan.partials}, c.norm.options());
      const scalar_t* v = c.v.const_data_ptr<scalar_t>();
      const auto* no_b = static_cast<const scalar_t*>(nullptr);
      const acc_t* g = c.g.const_data_ptr<acc_t>();
      scalar_t* w = c.w.mutable_data_ptr<scalar_t>();
      acc_t* norm = c.norm.mutable_data_ptr<acc_t>();
      if (plan.columns) {
        launch(weight_norm_partial_columns_kernel<scalar_t, acc_t>, shape, stream, v, no_b, geo,
               sum_sq.mutable_data_ptr<acc_t>());
        launch(weight_norm_scale_columns_kernel<scalar_t, acc_t>, shape, stream, v, g, sum_sq.const_data_ptr<acc_t>(),
               geo, w, norm);
      } else {
        launch(weight_norm_partial_kernel<scalar_t, acc_t>, shape, stream, v, no_b, geo,
               sum_sq.mutable_data_ptr<acc_t>());
        launch(weight_norm_scale_kernel<scalar_t, acc_t>, shape, stream, v, g, sum_sq.const_data_ptr<acc_t>(), geo, w,
               norm);
      }
    });
  }

  static void backward(const WeightNormBwdCall& c) {
    const plans::WeightNormPlan plan = weight_norm_plan(c.shape);
    const WeightNormGeometry geo = weight_norm_geometry(c.shape, plan);
    const plans::LaunchShape shape = launch_shape(plan.grid, plans::kWnThreads);
    const Stream stream = current_stream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.v.scalar_type(), "weight_norm_backward", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const at::Tensor dots = at::empty({plan.partials}, c.grad_g.options());
      const scalar_t* grad_w = c.grad_w.const_data_ptr<scalar_t>();
      const scalar_t* v = c.v.const_data_ptr<scalar_t>();
      const acc_t* g = c.g.const_data_ptr<acc_t>();
      const acc_t* norm = c.norm.const_data_ptr<acc_t>();
      scalar_t* grad_v = c.grad_v.mutable_data_ptr<scalar_t>();
      acc_t* grad_g = c.grad_g.mutable_data_ptr<acc_t>();
      if (plan.columns) {
        launch(weight_norm_partial_columns_kernel<scalar_t, acc_t>, shape, stream, grad_w, v, geo,
               dots.mutable_data_ptr<acc_t>());
        launch(weight_norm_grad_columns_kernel<scalar_t, acc_t>, shape, stream, grad_w, v, g, norm,
               dots.const_data_ptr<acc_t>(), geo, grad_v, grad_g);
      } else {
        launch(weight_norm_partial_kernel<scalar_t, acc_t>, shape, stream, grad_w, v, geo,
               dots.mutable_data_ptr<acc_t>());
        launch(weight_norm_grad_kernel<scalar_t, acc_t>, shape, stream, grad_w, v, g, norm,
               dots.const_data_ptr<acc_t>(), geo, grad_v, grad_g);
      }
    });
  }
};

}  // namespace NORM_EXT_GPU_NAMESPACE
}  // namespace norm_ext
