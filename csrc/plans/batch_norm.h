#pragma once
// Launch plans of the batch-norm family's GPU kernels (cuda/batch_norm_kernels.cuh). The kernels see
// one of two layouts: channels-first [outer = N][C][inner], or channels-last [outer = rows][C].
//  * Reductions: a partial kernel writes one state per (channel, split), a merge kernel folds each
//    channel's splits in order (deterministic). Channels-first: grid (splits, channels), threads
//    walk a channel's values in flat order. Channels-last: 32 x 8 blocks, x over 32 consecutive
//    channels of a row (one 128-byte transaction for fp32), y and the grid's y over rows.
//  * The element-wise kernels use the same two mappings.

#include <algorithm>
#include <array>
#include <cstdint>

#include "plans/device.h"

namespace norm_ext::plans {

inline constexpr int kBnThreads = 256;
inline constexpr int kBnColumns = 32;  // channels per block in the channels-last kernels
inline constexpr int kBnRowsPerBlock = kBnThreads / kBnColumns;
// Channels-first element-wise blocks cover at most this many of a plane's chunks along x; planes
// beyond the grid's y are strided over.
inline constexpr int64_t kBnMaxInnerBlocks = 1024;

struct BnView {
  bool channels_last;
  int64_t outer;
  int64_t channels;
  int64_t inner;
};

// The layout the GPU kernels read: a contiguous (N, C, 1, ...) input is also [rows][C], and reading
// it as such keeps every thread busy.
inline BnView bn_kernel_view(const BnView& v) {
  if (!v.channels_last && v.inner == 1) return {true, v.outer, v.channels, 1};
  return v;
}

struct BnReducePlan {
  std::array<int64_t, 3> grid;
  std::array<int64_t, 3> block;
  int64_t splits;      // partial states per channel
  int64_t merge_grid;  // blocks of kBnThreads channels for the merge kernel
};

inline BnReducePlan plan_bn_reduce(const BnView& v, const DeviceProps& d) {
  const int64_t target_blocks = static_cast<int64_t>(d.sm_count) * 8;
  const int64_t merge_grid = ceil_div(v.channels, kBnThreads);
  if (v.channels_last) {
    const int64_t column_blocks = ceil_div(v.channels, kBnColumns);
    const int64_t splits = std::clamp<int64_t>(
        std::min(ceil_div(v.outer, kBnRowsPerBlock * 4), target_blocks / column_blocks), 1, d.max_grid[1]);
    return {{column_blocks, splits, 1}, {kBnColumns, kBnRowsPerBlock, 1}, splits, merge_grid};
  }
  const int64_t per_channel = v.outer * v.inner;
  const int64_t splits = std::clamp<int64_t>(
      std::min(ceil_div(per_channel, kBnThreads * 4), target_blocks / v.channels + 1), 1, d.max_grid[1]);
  return {{splits, std::min(v.channels, d.max_grid[1]), 1}, {kBnThreads, 1, 1}, splits, merge_grid};
}

struct BnAffinePlan {
  std::array<int64_t, 3> grid;
  std::array<int64_t, 3> block;
};

// vec: values per thread of the channels-first kernel (its 128-bit width when planes are aligned).
inline BnAffinePlan plan_bn_affine(const BnView& v, int vec, const DeviceProps& d) {
  if (v.channels_last) {
    return {{ceil_div(v.channels, kBnColumns), std::min(ceil_div(v.outer, kBnRowsPerBlock), d.max_grid[1]), 1},
            {kBnColumns, kBnRowsPerBlock, 1}};
  }
  const int64_t planes = v.outer * v.channels;
  const int64_t inner_blocks = std::min<int64_t>(ceil_div(v.inner, kBnThreads * vec), kBnMaxInnerBlocks);
  return {{inner_blocks, std::min(planes, d.max_grid[1]), 1}, {kBnThreads, 1, 1}};
}

}  // namespace norm_ext::plans
