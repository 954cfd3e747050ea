#pragma once
// Device code of GroupNorm (and of InstanceNorm, G = C), with an optional fused SiLU on the output.
//
// Forward, two launches:
//   1. group_stats_kernel: block (group, chunk) computes the Welford state of one chunk of one
//      (n, g) group and stores it as a partial. Values are taken relative to the group's first
//      element, which keeps the running means small: with |mean| >> std a running mean of the raw
//      values carries rounding errors comparable to std, which inflate the variance.
//   2. group_norm_apply_kernel: block (group, chunk) merges its group's partials with its first warp,
//      in an order fixed by chunk indices (so every block of a group derives bit-identical
//      statistics), writes mean / rstd once, and normalizes its chunk.
// Backward, two launches, and a third with parameter gradients:
//   1. group_norm_backward_reduce_kernel: the first (group, chunk) blocks reduce the two group sums
//      sum(w * dz) and sum(w * dz * xhat); the remaining blocks reduce dweight / dbias partials per
//      (channel, row split) over (n, hw). Both only need the saved statistics, so they share one
//      launch.
//   2. group_norm_grad_input_kernel: block (group, chunk) merges its group's sums as above and
//      writes grad_input.
//   3. group_norm_param_grad_fold_kernel: dweight / dbias, each channel's splits summed in order.
// A (group, chunk) item takes a segment of s.segment threads (a whole block, or a power-of-two slice
// of one for groups shorter than a block); blocks stride over blocks of items (plans/group_norm.h
// caps the grid). All reductions combine partials in an order fixed by indices only, so results are
// deterministic.
// Offsets are int64. Inputs are contiguous (N, C, HW) or channels_last (N, HW, C); element j of a
// group is (c = g * D + j / HW, hw = j % HW) in the former and (hw = j / D, c = g * D + j % D) in the
// latter, so the kernels serve both layouts with one index map.

#include <cstdint>
#include <type_traits>

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
  int tile_width;  // tiled plans: channels per tile
  int64_t tiles;   // tiled plans: channel tiles per sample
  int64_t c;
  int64_t hw;
  int64_t groups;
  int64_t channels_per_group;
  int64_t group_len;  // D * HW
  int64_t chunk_len;
  int64_t chunks;
  int64_t items;  // N * G * chunks
  int segment;    // threads per item
  bool channels_last;
};

// The item a thread serves in the pass whose first item is `first`, and its lane in the item's
// segment. Threads past the last item get an empty range.
struct ItemSlot {
  int slot;  // of the block's kGnThreads / segment items
  int lane;
  int64_t item;
  bool active;
};

__device__ __forceinline__ ItemSlot item_slot(const GroupGeometry& s, int64_t first) {
  const int slot = threadIdx.x / s.segment;
  const int64_t item = first + slot;
  return {slot, static_cast<int>(threadIdx.x % s.segment), item, item < s.items};
}

__device__ __forceinline__ int64_t items_per_block(const GroupGeometry& s) {
  return kGnThreads / s.segment;
}

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

// Calls f(offset, channel) on the elements of the thread's item (a chunk of one group) that its lane
// owns: lane, lane + segment, ... of the chunk.
template <typename F>
__device__ __forceinline__ void for_each_item_element(const GroupGeometry& s, const ItemSlot& it, F&& f) {
  const int64_t group = it.item / s.chunks;
  const int64_t n = group / s.groups, g = group % s.groups;
  const int64_t begin = it.item % s.chunks * s.chunk_len;
  const int64_t end = chunk_end(s, begin);
  for (int64_t j = begin + it.lane; j < end; j += s.segment) {
    int64_t c;
    const int64_t off = element_offset(s, n, g, j, c);
    f(off, c);
  }
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

// Tree reduction over each segment of `segment` threads (a power of two dividing kGnThreads); the
// result is valid in the segment's first thread. The order of combination depends only on thread
// indices. Every thread of the block calls it. A caller reusing warp_slots must pass a barrier first
// (the block-stride loops below end each pass with one).
template <typename T>
__device__ __forceinline__ T segment_reduce(T v, T* warp_slots, int segment) {
  const int width = segment < kGnWarp ? segment : kGnWarp;
  // Lanes also pull from the next segment of their warp, but no segment's first lane does.
  for (int delta = width / 2; delta > 0; delta /= 2) v = combine(v, shfl_down(v, delta));
  if (segment <= kGnWarp) return v;
  const int lane = threadIdx.x % kGnWarp;
  const int warp = threadIdx.x / kGnWarp;
  const int warps = segment / kGnWarp;
  if (lane == 0) warp_slots[warp] = v;
  __syncthreads();
  if (warp % warps == 0) {
    v = warp_slots[warp + (lane < warps ? lane : 0)];
    for (int delta = warps / 2; delta > 0; delta /= 2) {
      const T other = shfl_down(v, delta);
      if (lane + delta < warps) v = combine(v, other);
    }
  }
  return v;
}

// A warp's merge of one group's `count` partials: lane l folds partials l, l + 32, ... in order, then a
// shuffle tree folds the lanes; valid in lane 0. Every block
// of a group gets the same bits. One thread folding up to 64 partials alone would keep the other 255
// waiting at the barrier after it.
template <typename T>
__device__ __forceinline__ T warp_merge_partials(const T* partials, int64_t count, T v) {
  for (int64_t k = threadIdx.x % kGnWarp; k < count; k += kGnWarp) v = combine(v, partials[k]);
#pragma unroll
  for (int delta = kGnWarp / 2; delta > 0; delta /= 2) v = combine(v, shfl_down(v, delta));
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

// grad_input of one element from its group's mean(w * dz) and mean(w * dz * xhat).
template <typename acc_t>
__device__ __forceinline__ acc_t grad_input_element(acc_t dy, acc_t x, acc_t mu, acc_t r, acc_t w, acc_t b, bool silu,
                                                    acc_t mean_dz, acc_t mean_dz_xhat) {
  const Pair<acc_t> e = backward_element(dy, x, mu, r, w, b, silu);
  return r * (e.a * w - mean_dz - e.b * mean_dz_xhat);
}

template <typename in_t, typename acc_t>
__global__ void group_stats_kernel(const in_t* __restrict__ x, GroupGeometry s, WelfordState<acc_t>* partials) {
  NORM_EXT_SHARED(WelfordState<acc_t>, slots, [kGnThreads / kGnWarp]);
  for (int64_t first = blockIdx.x * items_per_block(s); first < s.items; first += gridDim.x * items_per_block(s)) {
    const ItemSlot it = item_slot(s, first);
    WelfordState<acc_t> st = welford_init<acc_t>();
    if (it.active) {
      const int64_t group = it.item / s.chunks;
      int64_t channel;
      const acc_t shift = static_cast<acc_t>(x[element_offset(s, group / s.groups, group % s.groups, 0, channel)]);
      for_each_item_element(s, it,
                            [&](int64_t off, int64_t) { welford_update(st, static_cast<acc_t>(x[off]) - shift); });
    }
    st = segment_reduce(st, slots, s.segment);
    if (it.active && it.lane == 0) partials[it.item] = st;
    __syncthreads();
  }
}

// The statistics of a chunked group (one item per block) come from the first warp's merge of the
// group's partials; an unchunked group has one partial, which the segment's first thread reads.
template <typename in_t, typename param_t, typename acc_t>
__global__ void group_norm_apply_kernel(const in_t* __restrict__ x, const param_t* __restrict__ w,
                                        const param_t* __restrict__ b, const WelfordState<acc_t>* partials,
                                        GroupGeometry s, acc_t eps, bool silu, in_t* __restrict__ y,
                                        acc_t* __restrict__ mean_out, acc_t* __restrict__ rstd_out) {
  NORM_EXT_SHARED(acc_t, stats, [kGnThreads][2]);
  for (int64_t first = blockIdx.x * items_per_block(s); first < s.items; first += gridDim.x * items_per_block(s)) {
    const ItemSlot it = item_slot(s, first);
    const int64_t group = it.item / s.chunks;
    const int64_t chunk = it.item % s.chunks;
    const int64_t n = group / s.groups, g = group % s.groups;
    WelfordState<acc_t> st = welford_init<acc_t>();
    if (s.chunks > 1) {
      if (threadIdx.x < kGnWarp) st = warp_merge_partials(partials + group * s.chunks, s.chunks, st);
    } else if (it.active && it.lane == 0) {
      st = partials[it.item];
    }
    if (it.active && it.lane == 0) {
      const acc_t var = st.m2 / st.count;
      int64_t channel;
      stats[it.slot][0] = static_cast<acc_t>(x[element_offset(s, n, g, 0, channel)]) + st.mean;
      stats[it.slot][1] = acc_t(1) / sqrt((var > acc_t(0) ? var : acc_t(0)) + eps);
      if (chunk == 0) {
        mean_out[group] = stats[it.slot][0];
        rstd_out[group] = stats[it.slot][1];
      }
    }
    __syncthreads();
    if (it.active) {
      const acc_t mu = stats[it.slot][0], r = stats[it.slot][1];
      for_each_item_element(s, it, [&](int64_t off, int64_t c) {
        acc_t z = (static_cast<acc_t>(x[off]) - mu) * (r * load_param(w, c, acc_t(1))) + load_param(b, c, acc_t(0));
        if (silu) z *= sigmoid(z);
        y[off] = static_cast<in_t>(z);
      });
    }
    __syncthreads();
  }
}

// Passes [0, group_blocks): per (group, chunk) item the sums of w * dz and w * dz * xhat. Passes
// after them: the (dbias, dweight) partials of one channel (contiguous) or kGnChannelTile channels
// (channels_last) over one split of the (n, hw) rows, into param_partials[split][c].
// Four 256-thread blocks per SM (64 registers), half the SM's warps, for fp32 accumulation: its two
// work kinds (group sums, channel sums) otherwise take 80 registers, three blocks.
template <typename in_t, typename param_t, typename acc_t>
__global__ void __launch_bounds__(kGnThreads, std::is_same_v<acc_t, double> ? 2 : 4)
    group_norm_backward_reduce_kernel(const in_t* __restrict__ dy, const in_t* __restrict__ x,
                                      const acc_t* __restrict__ mean, const acc_t* __restrict__ rstd,
                                      const param_t* __restrict__ w, const param_t* __restrict__ b, GroupGeometry s,
                                      int64_t channel_items, int64_t channel_blocks, int64_t split_rows, bool silu,
                                      Pair<acc_t>* group_partials, Pair<acc_t>* param_partials) {
  NORM_EXT_SHARED(Pair<acc_t>, slots, [kGnThreads]);
  const int64_t group_blocks = (s.items + items_per_block(s) - 1) / items_per_block(s);
  const int64_t rows = s.n * s.hw;
  for (int64_t pass = blockIdx.x; pass < group_blocks + channel_blocks; pass += gridDim.x) {
    const int64_t channel_item = (pass - group_blocks) % channel_items;
    const int64_t split = (pass - group_blocks) / channel_items;
    const int64_t row_begin = split * split_rows;
    const int64_t row_end = row_begin + split_rows < rows ? row_begin + split_rows : rows;
    if (pass < group_blocks) {
      const ItemSlot it = item_slot(s, pass * items_per_block(s));
      Pair<acc_t> acc{acc_t(0), acc_t(0)};
      if (it.active) {
        const int64_t group = it.item / s.chunks;
        const acc_t mu = mean[group], r = rstd[group];
        for_each_item_element(s, it, [&](int64_t off, int64_t c) {
          const acc_t wc = load_param(w, c, acc_t(1));
          const Pair<acc_t> e = backward_element(static_cast<acc_t>(dy[off]), static_cast<acc_t>(x[off]), mu, r, wc,
                                                 load_param(b, c, acc_t(0)), silu);
          acc.a += wc * e.a;
          acc.b += wc * e.a * e.b;
        });
      }
      acc = segment_reduce(acc, slots, s.segment);
      if (it.active && it.lane == 0) group_partials[it.item] = acc;
    } else if (!s.channels_last) {
      const int64_t c = channel_item;
      const int64_t g = c / s.channels_per_group;
      const acc_t wc = load_param(w, c, acc_t(1)), bc = load_param(b, c, acc_t(0));
      Pair<acc_t> acc{acc_t(0), acc_t(0)};
      for (int64_t i = row_begin + threadIdx.x; i < row_end; i += kGnThreads) {
        const int64_t n = i / s.hw;
        const int64_t off = (n * s.c + c) * s.hw + i % s.hw;
        const int64_t group = n * s.groups + g;
        const Pair<acc_t> e = backward_element(static_cast<acc_t>(dy[off]), static_cast<acc_t>(x[off]), mean[group],
                                               rstd[group], wc, bc, silu);
        acc.a += e.a;
        acc.b += e.a * e.b;
      }
      acc = segment_reduce(acc, slots, kGnThreads);
      if (threadIdx.x == 0) param_partials[split * s.c + c] = acc;
    } else {
      // channels_last: lanes take consecutive channels of a row (coalesced), warps take rows.
      const int lane = threadIdx.x % kGnChannelTile;
      const int row_lane = threadIdx.x / kGnChannelTile;
      const int64_t c = channel_item * kGnChannelTile + lane;
      Pair<acc_t> acc{acc_t(0), acc_t(0)};
      if (c < s.c) {
        const int64_t g = c / s.channels_per_group;
        const acc_t wc = load_param(w, c, acc_t(1)), bc = load_param(b, c, acc_t(0));
        for (int64_t row = row_begin + row_lane; row < row_end; row += kGnRowsPerPass) {
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
        param_partials[split * s.c + c] = acc;
      }
    }
    __syncthreads();
  }
}

// Where a channel's (dbias, dweight) partials lie: partial (i, k) of channel c at
// i * outer_stride + c * channel_stride + k, for i < outer and k < inner (row splits: [split][c];
// tiled: [n][c][chunk]).
struct ParamPartialLayout {
  int64_t outer;
  int64_t outer_stride;
  int64_t channel_stride;
  int64_t inner;
};

// dbias / dweight of channel c: its partials summed in index order.
template <typename param_t, typename acc_t>
__global__ void group_norm_param_grad_fold_kernel(const Pair<acc_t>* __restrict__ param_partials,
                                                  ParamPartialLayout layout, int64_t channels, param_t* __restrict__ dw,
                                                  param_t* __restrict__ db) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= channels) return;
  Pair<acc_t> total{acc_t(0), acc_t(0)};
  for (int64_t i = 0; i < layout.outer; ++i) {
    const Pair<acc_t>* p = param_partials + i * layout.outer_stride + c * layout.channel_stride;
    for (int64_t k = 0; k < layout.inner; ++k) total = combine(total, p[k]);
  }
  if (db != nullptr) db[c] = static_cast<param_t>(total.a);
  if (dw != nullptr) dw[c] = static_cast<param_t>(total.b);
}

template <typename in_t, typename param_t, typename acc_t>
__global__ void group_norm_grad_input_kernel(const in_t* __restrict__ dy, const in_t* __restrict__ x,
                                             const acc_t* __restrict__ mean, const acc_t* __restrict__ rstd,
                                             const param_t* __restrict__ w, const param_t* __restrict__ b,
                                             const Pair<acc_t>* group_partials, GroupGeometry s, bool silu,
                                             in_t* __restrict__ dx) {
  NORM_EXT_SHARED(acc_t, coef, [kGnThreads][2]);
  for (int64_t first = blockIdx.x * items_per_block(s); first < s.items; first += gridDim.x * items_per_block(s)) {
    const ItemSlot it = item_slot(s, first);
    const int64_t group = it.item / s.chunks;
    Pair<acc_t> total{acc_t(0), acc_t(0)};
    if (s.chunks > 1) {
      if (threadIdx.x < kGnWarp) total = warp_merge_partials(group_partials + group * s.chunks, s.chunks, total);
    } else if (it.active && it.lane == 0) {
      total = group_partials[it.item];
    }
    if (it.active && it.lane == 0) {
      const acc_t inv_count = acc_t(1) / static_cast<acc_t>(s.group_len);
      coef[it.slot][0] = total.a * inv_count;
      coef[it.slot][1] = total.b * inv_count;
    }
    __syncthreads();
    if (it.active) {
      const acc_t mean_dz = coef[it.slot][0], mean_dz_xhat = coef[it.slot][1];
      const acc_t mu = mean[group], r = rstd[group];
      for_each_item_element(s, it, [&](int64_t off, int64_t c) {
        dx[off] = static_cast<in_t>(grad_input_element(static_cast<acc_t>(dy[off]), static_cast<acc_t>(x[off]), mu, r,
                                                       load_param(w, c, acc_t(1)), load_param(b, c, acc_t(0)), silu,
                                                       mean_dz, mean_dz_xhat));
      });
    }
    __syncthreads();
  }
}

// ----- tiled plans: channels_last, groups narrower than a warp (plans/group_norm.h) ----------------

// Item (n, tile, chunk) gives thread (lane, row lane) = (threadIdx.x % W, threadIdx.x / W), with W the
// tile width, channel tile * W + lane and rows row lane, + step, ... of the chunk of sample n.
struct TileSlot {
  int64_t n;
  int64_t first_channel;  // of the tile
  int64_t c;
  int64_t chunk;
  int64_t row_begin;
  int64_t row_end;
  int64_t step;  // rows per pass: kGnThreads / W
  bool active;
};

__device__ __forceinline__ TileSlot tile_slot(const GroupGeometry& s, int64_t item) {
  const int64_t chunk = item % s.chunks, sample_tile = item / s.chunks;
  const int64_t first = sample_tile % s.tiles * s.tile_width;
  const int64_t c = first + threadIdx.x % s.tile_width;
  const int64_t begin = chunk * s.chunk_len;
  const int64_t end = begin + s.chunk_len < s.hw ? begin + s.chunk_len : s.hw;
  return {sample_tile / s.tiles,     first,  c, chunk, begin + threadIdx.x / s.tile_width, end,
          kGnThreads / s.tile_width, c < s.c};
}

__device__ __forceinline__ int64_t tile_offset(const GroupGeometry& s, int64_t n, int64_t row, int64_t c) {
  return (n * s.hw + row) * s.c + c;
}

// The first partial of group g of sample n: its channels' partials, chunk-minor, are contiguous.
__device__ __forceinline__ int64_t tile_group_partials(const GroupGeometry& s, int64_t n, int64_t g) {
  return (n * s.c + g * s.channels_per_group) * s.chunks;
}

// The groups that the tile's channels belong to: [first, end), at most kGnChannelTile.
__device__ __forceinline__ Pair<int64_t> tile_groups(const GroupGeometry& s, const TileSlot& t) {
  const int64_t last = t.first_channel + s.tile_width < s.c ? t.first_channel + s.tile_width : s.c;
  return {t.first_channel / s.channels_per_group, (last - 1) / s.channels_per_group + 1};
}

// Folds each channel's row-lane values in row-lane order; valid in row lane 0.
template <typename T>
__device__ __forceinline__ T merge_row_lanes(T v, T* slots, int tile_width) {
  slots[threadIdx.x] = v;
  __syncthreads();
  if (static_cast<int>(threadIdx.x) < tile_width) {
    for (int k = tile_width + threadIdx.x; k < kGnThreads; k += tile_width) v = combine(v, slots[k]);
  }
  __syncthreads();
  return v;
}

// partials[n][c][chunk]: the Welford state of channel c over the chunk's rows, relative to the first
// value of c's group (the shift of group_stats_kernel, so a group's states merge as they are).
template <typename in_t, typename acc_t>
__global__ void group_stats_tiled_kernel(const in_t* __restrict__ x, GroupGeometry s, WelfordState<acc_t>* partials) {
  NORM_EXT_SHARED(WelfordState<acc_t>, slots, [kGnThreads]);
  for (int64_t item = blockIdx.x; item < s.items; item += gridDim.x) {
    const TileSlot t = tile_slot(s, item);
    WelfordState<acc_t> st = welford_init<acc_t>();
    if (t.active) {
      const int64_t group_first = t.c / s.channels_per_group * s.channels_per_group;
      const acc_t shift = static_cast<acc_t>(x[tile_offset(s, t.n, 0, group_first)]);
      for (int64_t r = t.row_begin; r < t.row_end; r += t.step) {
        welford_update(st, static_cast<acc_t>(x[tile_offset(s, t.n, r, t.c)]) - shift);
      }
    }
    st = merge_row_lanes(st, slots, s.tile_width);
    if (static_cast<int>(threadIdx.x) < s.tile_width && t.active) partials[(t.n * s.c + t.c) * s.chunks + t.chunk] = st;
  }
}

// Each warp merges the partials of the tile's groups w, w + 8, ...; the tile that holds a group's
// first channel writes its mean / rstd from chunk 0.
template <typename in_t, typename param_t, typename acc_t>
__global__ void group_norm_apply_tiled_kernel(const in_t* __restrict__ x, const param_t* __restrict__ w,
                                              const param_t* __restrict__ b, const WelfordState<acc_t>* partials,
                                              GroupGeometry s, acc_t eps, bool silu, in_t* __restrict__ y,
                                              acc_t* __restrict__ mean_out, acc_t* __restrict__ rstd_out) {
  NORM_EXT_SHARED(acc_t, stats, [kGnChannelTile][2]);
  for (int64_t item = blockIdx.x; item < s.items; item += gridDim.x) {
    const TileSlot t = tile_slot(s, item);
    const Pair<int64_t> groups = tile_groups(s, t);
    for (int64_t g = groups.a + threadIdx.x / kGnWarp; g < groups.b; g += kGnThreads / kGnWarp) {
      const WelfordState<acc_t> st = warp_merge_partials(partials + tile_group_partials(s, t.n, g),
                                                         s.channels_per_group * s.chunks, welford_init<acc_t>());
      if (threadIdx.x % kGnWarp == 0) {
        const acc_t var = st.m2 / st.count;
        const acc_t mu = static_cast<acc_t>(x[tile_offset(s, t.n, 0, g * s.channels_per_group)]) + st.mean;
        const acc_t r = acc_t(1) / sqrt((var > acc_t(0) ? var : acc_t(0)) + eps);
        stats[g - groups.a][0] = mu;
        stats[g - groups.a][1] = r;
        if (t.chunk == 0 && g * s.channels_per_group >= t.first_channel) {
          mean_out[t.n * s.groups + g] = mu;
          rstd_out[t.n * s.groups + g] = r;
        }
      }
    }
    __syncthreads();
    if (t.active) {
      const int64_t k = t.c / s.channels_per_group - groups.a;
      const acc_t mu = stats[k][0], r = stats[k][1];
      const acc_t scale = r * load_param(w, t.c, acc_t(1)), shift = load_param(b, t.c, acc_t(0));
      for (int64_t row = t.row_begin; row < t.row_end; row += t.step) {
        const int64_t off = tile_offset(s, t.n, row, t.c);
        acc_t z = (static_cast<acc_t>(x[off]) - mu) * scale + shift;
        if (silu) z *= sigmoid(z);
        y[off] = static_cast<in_t>(z);
      }
    }
    __syncthreads();
  }
}

// partials[n][c][chunk] = (sum dz, sum dz * xhat) over the chunk's rows: times w[c], the group sums'
// terms; summed over n and chunks, dbias / dweight.
template <typename in_t, typename param_t, typename acc_t>
__global__ void group_norm_backward_tiled_kernel(const in_t* __restrict__ dy, const in_t* __restrict__ x,
                                                 const acc_t* __restrict__ mean, const acc_t* __restrict__ rstd,
                                                 const param_t* __restrict__ w, const param_t* __restrict__ b,
                                                 GroupGeometry s, bool silu, Pair<acc_t>* partials) {
  NORM_EXT_SHARED(Pair<acc_t>, slots, [kGnThreads]);
  for (int64_t item = blockIdx.x; item < s.items; item += gridDim.x) {
    const TileSlot t = tile_slot(s, item);
    Pair<acc_t> acc{acc_t(0), acc_t(0)};
    if (t.active) {
      const int64_t group = t.n * s.groups + t.c / s.channels_per_group;
      const acc_t mu = mean[group], r = rstd[group];
      const acc_t wc = load_param(w, t.c, acc_t(1)), bc = load_param(b, t.c, acc_t(0));
      for (int64_t row = t.row_begin; row < t.row_end; row += t.step) {
        const int64_t off = tile_offset(s, t.n, row, t.c);
        const Pair<acc_t> e =
            backward_element(static_cast<acc_t>(dy[off]), static_cast<acc_t>(x[off]), mu, r, wc, bc, silu);
        acc.a += e.a;
        acc.b += e.a * e.b;
      }
    }
    acc = merge_row_lanes(acc, slots, s.tile_width);
    if (static_cast<int>(threadIdx.x) < s.tile_width && t.active)
      partials[(t.n * s.c + t.c) * s.chunks + t.chunk] = acc;
  }
}

template <typename in_t, typename param_t, typename acc_t>
__global__ void group_norm_grad_input_tiled_kernel(const in_t* __restrict__ dy, const in_t* __restrict__ x,
                                                   const acc_t* __restrict__ mean, const acc_t* __restrict__ rstd,
                                                   const param_t* __restrict__ w, const param_t* __restrict__ b,
                                                   const Pair<acc_t>* partials, GroupGeometry s, bool silu,
                                                   in_t* __restrict__ dx) {
  NORM_EXT_SHARED(acc_t, coef, [kGnChannelTile][2]);
  for (int64_t item = blockIdx.x; item < s.items; item += gridDim.x) {
    const TileSlot t = tile_slot(s, item);
    const Pair<int64_t> groups = tile_groups(s, t);
    for (int64_t g = groups.a + threadIdx.x / kGnWarp; g < groups.b; g += kGnThreads / kGnWarp) {
      const Pair<acc_t>* p = partials + tile_group_partials(s, t.n, g);
      Pair<acc_t> total{acc_t(0), acc_t(0)};
      for (int64_t k = threadIdx.x % kGnWarp; k < s.channels_per_group * s.chunks; k += kGnWarp) {
        const acc_t wc = load_param(w, g * s.channels_per_group + k / s.chunks, acc_t(1));
        total.a += wc * p[k].a;
        total.b += wc * p[k].b;
      }
#pragma unroll
      for (int delta = kGnWarp / 2; delta > 0; delta /= 2) total = combine(total, shfl_down(total, delta));
      if (threadIdx.x % kGnWarp == 0) {
        const acc_t inv_count = acc_t(1) / static_cast<acc_t>(s.group_len);
        coef[g - groups.a][0] = total.a * inv_count;
        coef[g - groups.a][1] = total.b * inv_count;
      }
    }
    __syncthreads();
    if (t.active) {
      const int64_t g = t.c / s.channels_per_group;
      const acc_t mean_dz = coef[g - groups.a][0], mean_dz_xhat = coef[g - groups.a][1];
      const acc_t mu = mean[t.n * s.groups + g], r = rstd[t.n * s.groups + g];
      const acc_t wc = load_param(w, t.c, acc_t(1)), bc = load_param(b, t.c, acc_t(0));
      for (int64_t row = t.row_begin; row < t.row_end; row += t.step) {
        const int64_t off = tile_offset(s, t.n, row, t.c);
        dx[off] = static_cast<in_t>(grad_input_element(static_cast<acc_t>(dy[off]), static_cast<acc_t>(x[off]), mu, r,
                                                       wc, bc, silu, mean_dz, mean_dz_xhat));
      }
    }
    __syncthreads();
  }
}

}  // namespace NORM_EXT_GPU_NAMESPACE
}  // namespace norm_ext
