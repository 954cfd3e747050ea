#pragma once
// GPU backend of PowerNorm (Shen et al. 2020) over (B, T, C) input viewed as tokens x channels: a
// family small enough to keep its device code and its launches in one file, behind the glue of
// ops/power_norm.h. The reductions follow plans/power_norm.h: each block writes one row of
// partials, and a finalize kernel sums the rows in order, so results are deterministic. The
// forward is one element-wise launch.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <cstdint>

#include "cuda/device_api.h"
#include "cuda/launch.h"
#include "ops/power_norm.h"
#include "plans/power_norm.h"

namespace norm_ext {
inline namespace NORM_EXT_GPU_NAMESPACE {

using plans::kPnLanes;
using plans::kPnRows;

// ----- device code ----------------------------------------------------------------------------------

// A thread's place in a reduction block (plans/power_norm.h): lane l of warp row y takes channel
// blockIdx.x * width + l % width of token l / width of each group of 32 / width tokens.
struct PnSlot {
  int width;
  int64_t c;
  int64_t first;  // the thread's first token
  int64_t step;   // between its tokens
  bool active;    // has a channel
  bool counts;    // counts its tokens (one lane per token)
};

__device__ __forceinline__ PnSlot pn_slot(int width, int64_t channels, int64_t block_tokens) {
  const int tokens_per_row = kPnLanes / width;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * width + threadIdx.x % width;
  const int64_t first =
      static_cast<int64_t>(blockIdx.y) * block_tokens + threadIdx.y * tokens_per_row + threadIdx.x / width;
  return {width, c, first, static_cast<int64_t>(kPnRows) * tokens_per_row, c < channels, threadIdx.x % width == 0};
}

// Sums `value` over the block's threads of each channel, in an order fixed by thread indices; the
// result is valid in the threads (0 <= x < width, y = 0).
template <typename acc_t>
__device__ __forceinline__ acc_t sum_channel(acc_t value, const PnSlot& p, acc_t (*scratch)[kPnLanes]) {
  scratch[threadIdx.y][threadIdx.x] = value;
  __syncthreads();
  acc_t total = 0;
  if (threadIdx.y == 0 && static_cast<int>(threadIdx.x) < p.width) {
    for (int r = 0; r < kPnRows; ++r) {
      for (int l = threadIdx.x; l < kPnLanes; l += p.width) total += scratch[r][l];
    }
  }
  __syncthreads();
  return total;
}

// The block's count of valid tokens, in thread (0, 0).
__device__ __forceinline__ int64_t sum_tokens(int64_t valid, int64_t (*count_scratch)[kPnLanes]) {
  count_scratch[threadIdx.y][threadIdx.x] = valid;
  __syncthreads();
  int64_t total = 0;
  if (threadIdx.x == 0 && threadIdx.y == 0) {
    for (int r = 0; r < kPnRows; ++r) {
      for (int l = 0; l < kPnLanes; ++l) total += count_scratch[r][l];
    }
  }
  return total;
}

// partial_sq[block][c] = sum of x^2 over the block's valid tokens; partial_count[block] = valid tokens.
template <typename scalar_t, typename acc_t>
__global__ void power_norm_stats_kernel(const scalar_t* __restrict__ x, const bool* __restrict__ pad,
                                        acc_t* __restrict__ partial_sq, int64_t* __restrict__ partial_count,
                                        int64_t tokens, int64_t channels, int64_t block_tokens, int width) {
  NORM_EXT_SHARED(acc_t, scratch, [kPnRows][kPnLanes]);
  NORM_EXT_SHARED(int64_t, count_scratch, [kPnRows][kPnLanes]);
  const PnSlot p = pn_slot(width, channels, block_tokens);
  const int64_t end = std::min(tokens, static_cast<int64_t>(blockIdx.y + 1) * block_tokens);
  acc_t sum_sq = 0;
  int64_t valid = 0;
  for (int64_t n = p.first; n < end; n += p.step) {
    if (pad != nullptr && pad[n]) continue;
    valid += p.counts ? 1 : 0;
    if (p.active) {
      const acc_t v = static_cast<acc_t>(x[n * channels + p.c]);
      sum_sq += v * v;
    }
  }
  const acc_t total = sum_channel(sum_sq, p, scratch);
  const int64_t block_count = sum_tokens(valid, count_scratch);
  if (threadIdx.y == 0 && static_cast<int>(threadIdx.x) < width && p.active) {
    partial_sq[blockIdx.y * channels + p.c] = total;
  }
  if (blockIdx.x == 0 && threadIdx.x == 0 && threadIdx.y == 0) partial_count[blockIdx.y] = block_count;
}

// out[c] = sum over the `rows` partial rows, in row order; thread 0 also totals the counts.
template <typename acc_t>
__global__ void sum_partials_kernel(const acc_t* __restrict__ partial, const int64_t* __restrict__ partial_count,
                                    acc_t* __restrict__ out, acc_t* __restrict__ count, int64_t rows,
                                    int64_t channels) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c < channels) {
    acc_t total = 0;
    for (int64_t r = 0; r < rows; ++r) total += partial[r * channels + c];
    out[c] = total;
  }
  if (c == 0) {
    int64_t total = 0;
    for (int64_t r = 0; r < rows; ++r) total += partial_count[r];
    *count = static_cast<acc_t>(total);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void power_norm_forward_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ factor,
                                          const acc_t* __restrict__ shift, scalar_t* __restrict__ y, int64_t numel,
                                          int64_t channels) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += stride) {
    const int64_t c = i % channels;
    y[i] = static_cast<scalar_t>(static_cast<acc_t>(x[i]) * factor[c] + shift[c]);
  }
}

// grad_input and three partial rows per token block, each summed over the valid tokens only (a
// padding token's x may be NaN or inf, and 0 * NaN is NaN): (corrected grad * z), dweight and dbias;
// plus the valid-token count per block.
template <typename scalar_t, typename acc_t>
__global__ void power_norm_backward_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x,
                                           const bool* __restrict__ pad, const acc_t* __restrict__ scale,
                                           const acc_t* __restrict__ weight, const acc_t* __restrict__ ema_gz,
                                           acc_t one_minus_alpha, scalar_t* __restrict__ dx,
                                           acc_t* __restrict__ partial, int64_t* __restrict__ partial_count,
                                           int64_t tokens, int64_t channels, int64_t block_tokens, int width) {
  NORM_EXT_SHARED(acc_t, scratch, [kPnRows][kPnLanes]);
  NORM_EXT_SHARED(int64_t, count_scratch, [kPnRows][kPnLanes]);
  const PnSlot p = pn_slot(width, channels, block_tokens);
  const int64_t end = std::min(tokens, static_cast<int64_t>(blockIdx.y + 1) * block_tokens);
  const int64_t c = p.c;
  const bool active = p.active;
  const acc_t s = active ? scale[c] : acc_t(0);
  const acc_t w = active ? weight[c] : acc_t(0);
  const acc_t correction = active ? one_minus_alpha * ema_gz[c] : acc_t(0);
  acc_t gamma = 0, dw = 0, db = 0;
  int64_t valid = 0;
  for (int64_t n = p.first; n < end; n += p.step) {
    const bool is_valid = pad == nullptr || !pad[n];
    valid += is_valid && p.counts ? 1 : 0;
    if (!active) continue;
    const int64_t i = n * channels + c;
    const acc_t z = static_cast<acc_t>(x[i]) * s;
    const acc_t g_out = static_cast<acc_t>(dy[i]);
    const acc_t approx = g_out * w - correction * z;
    dx[i] = static_cast<scalar_t>(approx * s);
    if (!is_valid) continue;
    dw += g_out * z;
    db += g_out;
    gamma += approx * z;
  }
  const bool writer = threadIdx.y == 0 && static_cast<int>(threadIdx.x) < width && active;
  const int64_t row = static_cast<int64_t>(blockIdx.y) * 3 * channels;
  gamma = sum_channel(gamma, p, scratch);
  if (writer) partial[row + c] = gamma;
  dw = sum_channel(dw, p, scratch);
  if (writer) partial[row + channels + c] = dw;
  db = sum_channel(db, p, scratch);
  if (writer) partial[row + 2 * channels + c] = db;
  const int64_t block_count = sum_tokens(valid, count_scratch);
  if (blockIdx.x == 0 && threadIdx.x == 0 && threadIdx.y == 0) partial_count[blockIdx.y] = block_count;
}

template <typename acc_t>
__global__ void power_norm_backward_finalize_kernel(const acc_t* __restrict__ partial,
                                                    const int64_t* __restrict__ partial_count,
                                                    acc_t* __restrict__ ema_gz, acc_t* __restrict__ grad_weight,
                                                    acc_t* __restrict__ grad_bias, int64_t rows, int64_t channels) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= channels) return;
  acc_t gamma = 0, dw = 0, db = 0;
  int64_t count = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const acc_t* p = partial + r * 3 * channels;
    gamma += p[c];
    dw += p[channels + c];
    db += p[2 * channels + c];
    count += partial_count[r];
  }
  grad_weight[c] = dw;
  grad_bias[c] = db;
  if (count > 0) ema_gz[c] += gamma / static_cast<acc_t>(count);
}

// ----- launches -------------------------------------------------------------------------------------

inline const bool* pad_ptr(const at::Tensor& pad) {
  return pad.defined() ? pad.const_data_ptr<bool>() : nullptr;
}

struct GpuPowerNorm {
  static constexpr c10::DeviceType kDevice = kGpuDeviceType;
  using Guard = DeviceGuard;

  static void stats(const PowerNormStatsCall& c) {
    const plans::PowerNormPlan plan = plans::plan_power_norm(c.shape.tokens, c.shape.channels, device_props());
    const at::Tensor partial = at::empty({plan.token_blocks, c.shape.channels}, c.sum_sq.options());
    const at::Tensor partial_count = at::empty({plan.token_blocks}, c.input.options().dtype(at::kLong));
    const Stream stream = current_stream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.input.scalar_type(), "power_norm_stats", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      launch(power_norm_stats_kernel<scalar_t, acc_t>, launch_shape(plan.reduce_grid, {kPnLanes, kPnRows, 1}), stream,
             c.input.const_data_ptr<scalar_t>(), pad_ptr(c.pad), partial.mutable_data_ptr<acc_t>(),
             partial_count.mutable_data_ptr<int64_t>(), c.shape.tokens, c.shape.channels, plan.block_tokens,
             plan.width);
      launch(sum_partials_kernel<acc_t>, launch_shape(plan.finalize_grid, plans::kPnThreads), stream,
             partial.const_data_ptr<acc_t>(), partial_count.const_data_ptr<int64_t>(),
             c.sum_sq.mutable_data_ptr<acc_t>(), c.count.mutable_data_ptr<acc_t>(), plan.token_blocks,
             c.shape.channels);
    });
  }

  static void forward(const PowerNormFwdCall& c) {
    const plans::PowerNormPlan plan = plans::plan_power_norm(c.shape.tokens, c.shape.channels, device_props());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.input.scalar_type(), "power_norm", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      launch(power_norm_forward_kernel<scalar_t, acc_t>, launch_shape(plan.forward_grid, plans::kPnThreads),
             current_stream(), c.input.const_data_ptr<scalar_t>(), c.factor.const_data_ptr<acc_t>(),
             c.shift.const_data_ptr<acc_t>(), c.out.mutable_data_ptr<scalar_t>(), c.input.numel(), c.shape.channels);
    });
  }

  static void backward(const PowerNormBwdCall& c) {
    const plans::PowerNormPlan plan = plans::plan_power_norm(c.shape.tokens, c.shape.channels, device_props());
    const int64_t C = c.shape.channels;
    const at::Tensor partial = at::empty({plan.token_blocks, 3, C}, c.grad_weight.options());
    const at::Tensor partial_count = at::empty({plan.token_blocks}, c.input.options().dtype(at::kLong));
    const Stream stream = current_stream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.input.scalar_type(), "power_norm_backward", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      launch(power_norm_backward_kernel<scalar_t, acc_t>, launch_shape(plan.reduce_grid, {kPnLanes, kPnRows, 1}),
             stream, c.grad_out.const_data_ptr<scalar_t>(), c.input.const_data_ptr<scalar_t>(), pad_ptr(c.pad),
             c.scale.const_data_ptr<acc_t>(), c.weight.const_data_ptr<acc_t>(), c.ema_gz.const_data_ptr<acc_t>(),
             static_cast<acc_t>(1.0 - c.alpha_bkw), c.grad_input.mutable_data_ptr<scalar_t>(),
             partial.mutable_data_ptr<acc_t>(), partial_count.mutable_data_ptr<int64_t>(), c.shape.tokens, C,
             plan.block_tokens, plan.width);
      launch(power_norm_backward_finalize_kernel<acc_t>, launch_shape(plan.finalize_grid, plans::kPnThreads), stream,
             partial.const_data_ptr<acc_t>(), partial_count.const_data_ptr<int64_t>(),
             c.ema_gz.mutable_data_ptr<acc_t>(), c.grad_weight.mutable_data_ptr<acc_t>(),
             c.grad_bias.mutable_data_ptr<acc_t>(), plan.token_blocks, C);
    });
  }
};

}  // namespace NORM_EXT_GPU_NAMESPACE
}  // namespace norm_ext
