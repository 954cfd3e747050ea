#pragma once
// Device code of GroupNorm (and of InstanceNorm, G = C), with an optional fused SiLU on the output.
//
// Forward, two launches:
//   1. group_stats_kernel: block (group, chunk) computes the Welford state of one chunk of one
//      (n, g) group and stores it as a partial. Values are taken relative to the group's first
//      element, which keeps the running means small: with |mean| >> std a running mean of the raw
//      values carries rounding errors comparable to std, which inflate the variance.
//   2. group_norm_apply_kernel: block (group, chunk) merges its group's partials in chunk order (so
//      every block of a group derives bit-identical statistics), writes mean / rstd once, and
//      normalizes its chunk.
// Backward, two launches:
//   1. group_norm_backward_reduce_kernel: the first (group, chunk) blocks reduce the two group sums
//      sum(w * dz) and sum(w * dz * xhat); the remaining blocks reduce dweight / dbias per channel
//      over (n, hw). Both only need the saved statistics, so they share one launch.
//   2. group_norm_grad_input_kernel: block (group, chunk) merges its group's sums in order and
//      writes grad_input.
// Blocks stride over their (group, chunk) work items (plans/group_norm.h caps the grid). All
// reductions combine partials in an order fixed by indices only, so results are deterministic.
// Offsets are int64. Inputs are contiguous (N, C, HW) or channels_last (N, HW, C); element j of a
// group is (c = g * D + j / HW, hw = j % HW) in the former and (hw = j / D, c = g * D + j % D) in the
// latter, so the kernels serve both layouts with one index map.

#include <cstdint>

#include "common/welford.h"
#include "cuda/device_api.h"
#include "plans/group_norm.h"

namespace norm_ext {
inline namespace NORM_EXT_GPU_NAMESPACE {

using plans::kGnChannelTile;
using plans::kGnRowsPerPass;
using plans::kGnThreads;
constexpr int kGnWarp = 32;

struct GroupGeometry {
  int64_t n;
  int64_t c;
  int64_t hw;
  int64_t groups;
  int64_t channels_per_group;
  int64_t group_len;  // D * HW
  int64_t chunk_len;
  int64_t chunks;
  bool channels_last;
};

// Offset of element j of group (n, g), and its channel.
__device__ __forceinline__ int64_t element_offset(const GroupGeometry& s, int64_t n, int64_t g, int64_t j,
                                                  int64_t& channel) {
  if (s.channels_last) {
    const int64_t hw = j / s.channels_per_group;
    channel = g * s.channels_per_group + j % s.channels_per_group;
    return (n * s.hw + hw) * s.c + channel;
  }
  channel = g * s.channels_per_group + j / s.hw;
  return (n * s.c + g * s.channels_per_group) * s.hw + j;
}

__device__ __forceinline__ int64_t chunk_end(const GroupGeometry& s, int64_t begin) {
  return begin + s.chunk_len < s.group_len ? begin + s.chunk_len : s.group_len;
}

template <typename T>
struct Pair {
  T a;
  T b;
};

template <typename acc_t>
__device__ __forceinline__ WelfordState<acc_t> shfl_down(const WelfordState<acc_t>& v, int delta) {
  return {__shfl_down_sync(0xffffffffu, v.count, delta), __shfl_down_sync(0xffffffffu, v.mean, delta),
          __shfl_down_sync(0xffffffffu, v.m2, delta)};
}

template <typename acc_t>
__device__ __forceinline__ Pair<acc_t> shfl_down(const Pair<acc_t>& v, int delta) {
  return {__shfl_down_sync(0xffffffffu, v.a, delta), __shfl_down_sync(0xffffffffu, v.b, delta)};
}

template <typename acc_t>
__device__ __forceinline__ WelfordState<acc_t> combine(const WelfordState<acc_t>& x, const WelfordState<acc_t>& y) {
  return welford_merge(x, y);
}

template <typename acc_t>
__device__ __forceinline__ Pair<acc_t> combine(const Pair<acc_t>& x, const Pair<acc_t>& y) {
  return {x.a + y.a, x.b + y.b};
}

// Tree reduction of a 1-D block of kGnThreads threads; the result is valid in thread 0. The order
// of combination depends only on thread indices. A caller reusing warp_slots must pass a barrier
// first (the block-stride loops below end each item with one).
template <typename T>
__device__ __forceinline__ T block_reduce(T v, T* warp_slots) {
  const int lane = threadIdx.x % kGnWarp;
  const int warp = threadIdx.x / kGnWarp;
#pragma unroll
  for (int delta = kGnWarp / 2; delta > 0; delta /= 2) v = combine(v, shfl_down(v, delta));
  if (lane == 0) warp_slots[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = warp_slots[lane < kGnThreads / kGnWarp ? lane : 0];
#pragma unroll
    for (int delta = kGnThreads / kGnWarp / 2; delta > 0; delta /= 2) {
      const T other = shfl_down(v, delta);
      if (lane + delta < kGnThreads / kGnWarp) v = combine(v, other);
    }
  }
  return v;
}

template <typename acc_t>
__device__ __forceinline__ acc_t sigmoid(acc_t z) {
  return acc_t(1) / (acc_t(1) + exp(-z));
}

template <typename acc_t, typename param_t>
__device__ __forceinline__ acc_t load_param(const param_t* p, int64_t c, acc_t fallback) {
  return p != nullptr ? static_cast<acc_t>(p[c]) : fallback;
}

// dz (the gradient reaching the affine output, through the SiLU when fused) and xhat.
template <typename acc_t>
__device__ __forceinline__ Pair<acc_t> backward_element(acc_t dy, acc_t x, acc_t mu, acc_t r, acc_t w, acc_t b,
                                                        bool silu) {
  const acc_t xhat = (x - mu) * r;
  if (!silu) return {dy, xhat};
  const acc_t z = xhat * w + b;
  const acc_t sg = sigmoid(z);
  return {dy * sg * (acc_t(1) + z * (acc_t(1) - sg)), xhat};
}

template <typename in_t, typename acc_t>
__global__ void group_stats_kernel(const in_t* __restrict__ x, GroupGeometry s, WelfordState<acc_t>* partials) {
  NORM_EXT_SHARED(WelfordState<acc_t>, slots, [kGnThreads / kGnWarp]);
  const int64_t items = s.n * s.groups * s.chunks;
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int64_t group = item / s.chunks;
    const int64_t chunk = item % s.chunks;
    const int64_t n = group / s.groups, g = group % s.groups;
    const int64_t begin = chunk * s.chunk_len;
    const int64_t end = chunk_end(s, begin);
    int64_t channel;
    const acc_t shift = static_cast<acc_t>(x[element_offset(s, n, g, 0, channel)]);
    WelfordState<acc_t> st = welford_init<acc_t>();
    for (int64_t j = begin + threadIdx.x; j < end; j += kGnThreads) {
      welford_update(st, static_cast<acc_t>(x[element_offset(s, n, g, j, channel)]) - shift);
    }
    st = block_reduce(st, slots);
    if (threadIdx.x == 0) partials[item] = st;
    __syncthreads();
  }
}

template <typename in_t, typename param_t, typename acc_t>
__global__ void group_norm_apply_kernel(const in_t* __restrict__ x, const param_t* __restrict__ w,
                                        const param_t* __restrict__ b, const WelfordState<acc_t>* partials,
                                        GroupGeometry s, acc_t eps, bool silu, in_t* __restrict__ y,
                                        acc_t* __restrict__ mean_out, acc_t* __restrict__ rstd_out) {
  NORM_EXT_SHARED(acc_t, stats, [2]);
  const int64_t items = s.n * s.groups * s.chunks;
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int64_t group = item / s.chunks;
    const int64_t chunk = item % s.chunks;
    const int64_t n = group / s.groups, g = group % s.groups;
    if (threadIdx.x == 0) {
      WelfordState<acc_t> st = welford_init<acc_t>();
      for (int64_t k = 0; k < s.chunks; ++k) st = welford_merge(st, partials[group * s.chunks + k]);
      const acc_t var = st.m2 / st.count;
      int64_t channel;
      stats[0] = static_cast<acc_t>(x[element_offset(s, n, g, 0, channel)]) + st.mean;
      stats[1] = acc_t(1) / sqrt((var > acc_t(0) ? var : acc_t(0)) + eps);
      if (chunk == 0) {
        mean_out[group] = stats[0];
        rstd_out[group] = stats[1];
      }
    }
    __syncthreads();
    const acc_t mu = stats[0], r = stats[1];
    const int64_t begin = chunk * s.chunk_len;
    const int64_t end = chunk_end(s, begin);
    for (int64_t j = begin + threadIdx.x; j < end; j += kGnThreads) {
      int64_t c;
      const int64_t off = element_offset(s, n, g, j, c);
      acc_t z = (static_cast<acc_t>(x[off]) - mu) * (r * load_param(w, c, acc_t(1))) + load_param(b, c, acc_t(0));
      if (silu) z *= sigmoid(z);
      y[off] = static_cast<in_t>(z);
    }
    __syncthreads();
  }
}

// Work items [0, N * G * chunks): per (group, chunk) the sums of w * dz and w * dz * xhat. Items
// after them: dweight / dbias for one channel (contiguous) or kGnChannelTile channels (channels_last),
// over every (n, hw).
template <typename in_t, typename param_t, typename acc_t>
__global__ void group_norm_backward_reduce_kernel(const in_t* __restrict__ dy, const in_t* __restrict__ x,
                                                  const acc_t* __restrict__ mean, const acc_t* __restrict__ rstd,
                                                  const param_t* __restrict__ w, const param_t* __restrict__ b,
                                                  GroupGeometry s, int64_t channel_items, bool silu,
                                                  Pair<acc_t>* group_partials, param_t* __restrict__ dw,
                                                  param_t* __restrict__ db) {
  NORM_EXT_SHARED(Pair<acc_t>, slots, [kGnThreads]);
  const int64_t group_items = s.n * s.groups * s.chunks;
  const int64_t rows = s.n * s.hw;
  for (int64_t item = blockIdx.x; item < group_items + channel_items; item += gridDim.x) {
    if (item < group_items) {
      const int64_t group = item / s.chunks;
      const int64_t chunk = item % s.chunks;
      const int64_t n = group / s.groups, g = group % s.groups;
      const acc_t mu = mean[group], r = rstd[group];
      const int64_t begin = chunk * s.chunk_len;
      const int64_t end = chunk_end(s, begin);
      Pair<acc_t> acc{acc_t(0), acc_t(0)};
      for (int64_t j = begin + threadIdx.x; j < end; j += kGnThreads) {
        int64_t c;
        const int64_t off = element_offset(s, n, g, j, c);
        const acc_t wc = load_param(w, c, acc_t(1));
        const Pair<acc_t> e = backward_element(static_cast<acc_t>(dy[off]), static_cast<acc_t>(x[off]), mu, r, wc,
                                               load_param(b, c, acc_t(0)), silu);
        acc.a += wc * e.a;
        acc.b += wc * e.a * e.b;
      }
      acc = block_reduce(acc, slots);
      if (threadIdx.x == 0) group_partials[item] = acc;
    } else if (!s.channels_last) {
      const int64_t c = item - group_items;
      const int64_t g = c / s.channels_per_group;
      const acc_t wc = load_param(w, c, acc_t(1)), bc = load_param(b, c, acc_t(0));
      Pair<acc_t> acc{acc_t(0), acc_t(0)};
      for (int64_t i = threadIdx.x; i < rows; i += kGnThreads) {
        const int64_t n = i / s.hw;
        const int64_t off = (n * s.c + c) * s.hw + i % s.hw;
        const int64_t group = n * s.groups + g;
        const Pair<acc_t> e = backward_element(static_cast<acc_t>(dy[off]), static_cast<acc_t>(x[off]), mean[group],
                                               rstd[group], wc, bc, silu);
        acc.a += e.a;
        acc.b += e.a * e.b;
      }
      acc = block_reduce(acc, slots);
      if (threadIdx.x == 0) {
        if (db != nullptr) db[c] = static_cast<param_t>(acc.a);
        if (dw != nullptr) dw[c] = static_cast<param_t>(acc.b);
      }
    } else {
      // channels_last: lanes take consecutive channels of a row (coalesced), warps take rows.
      const int lane = threadIdx.x % kGnChannelTile;
      const int row_lane = threadIdx.x / kGnChannelTile;
      const int64_t c = (item - group_items) * kGnChannelTile + lane;
      Pair<acc_t> acc{acc_t(0), acc_t(0)};
      if (c < s.c) {
        const int64_t g = c / s.channels_per_group;
        const acc_t wc = load_param(w, c, acc_t(1)), bc = load_param(b, c, acc_t(0));
        for (int64_t row = row_lane; row < rows; row += kGnRowsPerPass) {
          const int64_t group = (row / s.hw) * s.groups + g;
          const int64_t off = row * s.c + c;
          const Pair<acc_t> e = backward_element(static_cast<acc_t>(dy[off]), static_cast<acc_t>(x[off]), mean[group],
                                                 rstd[group], wc, bc, silu);
          acc.a += e.a;
          acc.b += e.a * e.b;
        }
      }
      slots[threadIdx.x] = acc;
      __syncthreads();
      if (row_lane == 0 && c < s.c) {
        for (int k = 1; k < kGnRowsPerPass; ++k) acc = combine(acc, slots[k * kGnChannelTile + lane]);
        if (db != nullptr) db[c] = static_cast<param_t>(acc.a);
        if (dw != nullptr) dw[c] = static_cast<param_t>(acc.b);
      }
    }
    __syncthreads();
  }
}

template <typename in_t, typename param_t, typename acc_t>
__global__ void group_norm_grad_input_kernel(const in_t* __restrict__ dy, const in_t* __restrict__ x,
                                             const acc_t* __restrict__ mean, const acc_t* __restrict__ rstd,
                                             const param_t* __restrict__ w, const param_t* __restrict__ b,
                                             const Pair<acc_t>* group_partials, GroupGeometry s, bool silu,
                                             in_t* __restrict__ dx) {
  NORM_EXT_SHARED(acc_t, coef, [2]);
  const int64_t items = s.n * s.groups * s.chunks;
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int64_t group = item / s.chunks;
    const int64_t chunk = item % s.chunks;
    if (threadIdx.x == 0) {
      Pair<acc_t> total{acc_t(0), acc_t(0)};
      for (int64_t k = 0; k < s.chunks; ++k) total = combine(total, group_partials[group * s.chunks + k]);
      const acc_t inv_count = acc_t(1) / static_cast<acc_t>(s.group_len);
      coef[0] = total.a * inv_count;
      coef[1] = total.b * inv_count;
    }
    __syncthreads();
    const acc_t mean_dz = coef[0], mean_dz_xhat = coef[1];
    const acc_t mu = mean[group], r = rstd[group];
    const int64_t n = group / s.groups, g = group % s.groups;
    const int64_t begin = chunk * s.chunk_len;
    const int64_t end = chunk_end(s, begin);
    for (int64_t j = begin + threadIdx.x; j < end; j += kGnThreads) {
      int64_t c;
      const int64_t off = element_offset(s, n, g, j, c);
      const acc_t wc = load_param(w, c, acc_t(1));
      const Pair<acc_t> e = backward_element(static_cast<acc_t>(dy[off]), static_cast<acc_t>(x[off]), mu, r, wc,
                                             load_param(b, c, acc_t(0)), silu);
      dx[off] = static_cast<in_t>(r * (e.a * wc - mean_dz - e.b * mean_dz_xhat));
    }
    __syncthreads();
  }
}

}  // namespace NORM_EXT_GPU_NAMESPACE
}  // namespace norm_ext
