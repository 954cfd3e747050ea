#pragma once
// Launch plans of the batch-norm family's GPU kernels (cuda/batch_norm_kernels.cuh). The kernels see
// one of two layouts: channels-first [outer = N][C][inner], or channels-last [outer = rows][C].
//  * Reductions: a partial kernel writes one state per (channel, split), a merge kernel folds each
//    channel's splits in order (deterministic). Channels-first: grid (splits, channel blocks),
//    threads walk a channel's values in flat order; a channel of fewer than 256 values takes a
//    block row of the next power of two of them, several channels a block. Channels-last: blocks of bn_columns(C) x
//    (256 / that), x over consecutive channels of a row (32 of them: one 128-byte transaction for fp32), y and the
//    grid's y over rows. With C < 32 a block row narrows to the next power of two of C, so that
//    more than half the lanes have a channel to work on (at C = 1 every lane takes a row of its own)
//    and a warp still reads consecutive bytes.
//  * The element-wise kernels use the channels-last mapping above, and for channels-first blocks of
//    x over a plane's (vectors of) values and y over planes: a small plane (7 x 7) takes a slice of a
//    block rather than a block of 256 threads of which 49 would work.

#include <algorithm>
#include <array>
#include <cstdint>

#include "plans/device.h"

namespace norm_ext::plans {

inline constexpr int kBnThreads = 256;
inline constexpr int kBnColumns = 32;  // most channels per block in the channels-last kernels
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

inline int64_t next_pow2(int64_t v) {
  int64_t p = 1;
  while (p < v) p *= 2;
  return p;
}

// Channels per block row of the channels-last kernels; the block has kBnThreads / this rows.
inline int64_t bn_columns(int64_t channels) {
  return std::min<int64_t>(next_pow2(channels), kBnColumns);
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
    const int64_t columns = bn_columns(v.channels);
    const int64_t rows_per_block = kBnThreads / columns;
    const int64_t column_blocks = ceil_div(v.channels, columns);
    const int64_t splits = std::clamp<int64_t>(
        std::min(ceil_div(v.outer, rows_per_block * 4), target_blocks / column_blocks), 1, d.max_grid[1]);
    return {{column_blocks, splits, 1}, {columns, rows_per_block, 1}, splits, merge_grid};
  }
  const int64_t per_channel = v.outer * v.inner;
  const int64_t splits = std::clamp<int64_t>(
      std::min(ceil_div(per_channel, kBnThreads * 4), target_blocks / v.channels + 1), 1, d.max_grid[1]);
  const int64_t width = std::min<int64_t>(next_pow2(per_channel), kBnThreads);
  const int64_t channels_per_block = kBnThreads / width;
  return {{splits, std::min(ceil_div(v.channels, channels_per_block), d.max_grid[1]), 1},
          {width, channels_per_block, 1},
          splits,
          merge_grid};
}

struct BnAffinePlan {
  std::array<int64_t, 3> grid;
  std::array<int64_t, 3> block;
};

// vec: values per thread of the channels-first kernel (its 128-bit width when planes are aligned).
// The grid stops at a few blocks per SM: past that a thread walks more rows (channels-last) or more
// of its plane (channels-first), and the per-channel coefficients it loaded serve them all instead
// of being loaded again by another thread.
inline BnAffinePlan plan_bn_affine(const BnView& v, int vec, const DeviceProps& d) {
  const int64_t target_blocks = static_cast<int64_t>(d.sm_count) * 4;
  if (v.channels_last) {
    const int64_t columns = bn_columns(v.channels);
    const int64_t rows_per_block = kBnThreads / columns;
    const int64_t column_blocks = ceil_div(v.channels, columns);
    const int64_t row_blocks =
        std::min({ceil_div(v.outer, rows_per_block), ceil_div(target_blocks, column_blocks), d.max_grid[1]});
    return {{column_blocks, row_blocks, 1}, {columns, rows_per_block, 1}};
  }
  const int64_t planes = v.outer * v.channels;
  const int64_t chunks = ceil_div(v.inner, vec);
  const int64_t width = std::min<int64_t>(next_pow2(chunks), kBnThreads);
  const int64_t planes_per_block = kBnThreads / width;
  const int64_t plane_blocks = std::min(ceil_div(planes, planes_per_block), d.max_grid[1]);
  const int64_t chunk_blocks =
      std::min({ceil_div(chunks, width), ceil_div(target_blocks, plane_blocks), kBnMaxInnerBlocks});
  return {{chunk_blocks, plane_blocks, 1}, {width, planes_per_block, 1}};
}

}  // namespace norm_ext::plans
