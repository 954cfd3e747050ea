#pragma once
// Launch plan of the GroupNorm GPU kernels (cuda/group_norm_kernels.cuh): each (sample, group) is cut
// into chunks, (group, chunk) items, enough of them to fill the GPU when N * G is small but no chunk
// shorter than a few passes of a block. An item takes a block, or, when a group is shorter than a
// block (InstanceNorm on 7 x 7: 49 values), a segment of the next power of two of its length, so that
// more than half the threads have a value; a block then serves kGnThreads / segment items. The
// kernels stride over blocks of items, so a grid capped at the device's limit still covers every
// group.
//
// Channels-last input with groups narrower than a warp (C / G < kGnChannelTile; InstanceNorm: 1) is
// planned `tiled`: a group's values in a row of C are only C / G apart from the next group's, so a
// warp on one group would read a short run per row (with C / G = 2 and float32, 8 bytes of each
// 32-byte sector). An item is then (sample, tile of tile_width channels, chunk of rows): lanes on
// consecutive channels, kGnThreads / tile_width rows at a time, and a partial per (sample, channel,
// chunk). tile_width is kGnChannelTile, or for fewer channels the power of two that holds them (16
// channels in tiles of 32 would leave half the lanes idle);
// a group's partials are contiguous, and the next kernel merges them with one warp per group. The
// backward's partials per (sample, channel, chunk) are the sums of dz and dz * xhat, which serve both
// the group sums (times the channel's weight) and dweight / dbias, so x and dy are read once.
//
// The backward's dweight / dbias reduction cuts each channel (a tile of kGnChannelTile channels
// on channels_last input) into row splits, enough to fill the GPU when C is small: one block per
// channel over all N * HW rows would run on long after the group sums finish (16 channels, 64K rows:
// each of 16 blocks carries 4 times an SM's share of the bytes). A fold kernel sums the splits.

#include <algorithm>
#include <cstdint>

#include "plans/device.h"

namespace norm_ext::plans {

inline constexpr int kGnThreads = 256;
inline constexpr int64_t kGnMaxChunks = 64;
inline constexpr int64_t kGnMinChunkElements = 2048;
// Channels per block, and rows per pass, of the per-channel reduction on channels_last input.
inline constexpr int kGnChannelTile = 32;
inline constexpr int kGnRowsPerPass = kGnThreads / kGnChannelTile;
// Passes of the row lanes over a tiled chunk, at least.
inline constexpr int64_t kGnMinTileChunkPasses = 4;
// Rows of one split of the dweight / dbias reduction, at least.
inline constexpr int64_t kGnMinSplitRows = 512;
inline constexpr int kGnFoldThreads = 256;

struct GroupNormPlan {
  int64_t group_len;       // elements of one (sample, group): C / G * HW
  bool tiled;              // channels-last groups narrower than a warp, in channel tiles
  int64_t tile_width;      // tiled: channels per tile
  int64_t tiles;           // tiled: channel tiles per sample
  int64_t chunks;          // per group (tiled: per (sample, tile))
  int64_t chunk_len;       // elements (tiled: rows)
  int64_t items;           // N * G * chunks (tiled: N * tiles * chunks)
  int64_t partials;        // the first kernel's partial results: items (tiled: N * C * chunks)
  int64_t segment;         // threads per item, a power of two dividing kGnThreads
  int64_t group_blocks;    // blocks of kGnThreads / segment items
  int64_t grid;            // blocks launched for the group kernels (capped)
  int64_t channel_items;   // backward: channels (tiles on channels_last) of the dweight / dbias reduction
  int64_t channel_splits;  // row splits per channel item
  int64_t split_rows;
  int64_t channel_blocks;  // channel_items * channel_splits (0 when no parameter gradient is wanted)
  int64_t backward_grid;   // blocks launched for the backward's reduction kernel (capped)
  int64_t fold_grid;       // blocks of kGnFoldThreads channels folding the splits
};

inline GroupNormPlan plan_group_norm(int64_t n, int64_t c, int64_t hw, int64_t groups, bool channels_last,
                                     bool param_grads, const DeviceProps& d) {
  GroupNormPlan p{};
  p.group_len = c / groups * hw;
  const int64_t target_blocks = 4 * static_cast<int64_t>(d.sm_count);
  p.tiled = channels_last && c / groups < kGnChannelTile;
  p.tile_width = kGnChannelTile;
  while (p.tile_width > 1 && p.tile_width / 2 >= c) p.tile_width /= 2;
  p.tiles = p.tiled ? ceil_div(c, p.tile_width) : 1;
  const int64_t min_tile_chunk_rows = kGnMinTileChunkPasses * (kGnThreads / p.tile_width);
  const int64_t units = p.tiled ? n * p.tiles : n * groups;
  const int64_t length = p.tiled ? hw : p.group_len;
  const int64_t want = ceil_div(target_blocks, units);
  const int64_t most = std::max<int64_t>(1, length / (p.tiled ? min_tile_chunk_rows : kGnMinChunkElements));
  p.chunks = std::clamp<int64_t>(want, 1, std::min(most, kGnMaxChunks));
  p.chunk_len = ceil_div(length, p.chunks);
  p.chunks = ceil_div(length, p.chunk_len);
  p.items = units * p.chunks;
  p.partials = p.tiled ? n * c * p.chunks : p.items;
  p.segment = kGnThreads;
  while (!p.tiled && p.segment > 1 && p.segment / 2 >= p.group_len) p.segment /= 2;
  p.group_blocks = ceil_div(p.items, kGnThreads / p.segment);
  p.grid = std::min(p.group_blocks, d.max_grid[0]);
  // Tiled, the dweight / dbias partials are the group pass's own.
  p.channel_items = p.tiled ? 0 : channels_last ? ceil_div(c, int64_t{kGnChannelTile}) : c;
  const int64_t rows = n * hw;
  const int64_t most_splits = std::max<int64_t>(1, rows / kGnMinSplitRows);
  p.channel_splits =
      std::clamp<int64_t>(ceil_div(target_blocks, std::max<int64_t>(p.channel_items, 1)), 1, most_splits);
  p.split_rows = ceil_div(rows, p.channel_splits);
  p.channel_splits = ceil_div(rows, p.split_rows);
  p.channel_blocks = param_grads ? p.channel_items * p.channel_splits : 0;
  p.backward_grid = std::min(p.group_blocks + p.channel_blocks, d.max_grid[0]);
  p.fold_grid = ceil_div(c, int64_t{kGnFoldThreads});
  return p;
}

}  // namespace norm_ext::plans
