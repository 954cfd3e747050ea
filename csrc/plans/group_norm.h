#pragma once
// Launch plan of the GroupNorm GPU kernels (cuda/group_norm_kernels.cuh): each (sample, group) is cut
// into chunks, (group, chunk) items, enough of them to fill the GPU when N * G is small but no chunk
// shorter than a few passes of a block. An item takes a block, or, when a group is shorter than a
// block (InstanceNorm on 7 x 7: 49 values), a segment of the next power of two of its length, so that
// more than half the threads have a value; a block then serves kGnThreads / segment items. The
// kernels stride over blocks of items, so a grid capped at the device's limit still covers every
// group.

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

struct GroupNormPlan {
  int64_t group_len;  // elements of one (sample, group): C / G * HW
  int64_t chunks;     // per group
  int64_t chunk_len;
  int64_t items;           // N * G * chunks
  int64_t segment;         // threads per item, a power of two dividing kGnThreads
  int64_t group_blocks;    // blocks of kGnThreads / segment items
  int64_t grid;            // blocks launched for the group kernels (capped)
  int64_t channel_blocks;  // backward: blocks of the dweight / dbias reduction (0 when not wanted)
  int64_t backward_grid;   // blocks launched for the backward's reduction kernel (capped)
};

inline GroupNormPlan plan_group_norm(int64_t n, int64_t c, int64_t hw, int64_t groups, bool channels_last,
                                     bool param_grads, const DeviceProps& d) {
  GroupNormPlan p{};
  p.group_len = c / groups * hw;
  const int64_t target_blocks = 4 * static_cast<int64_t>(d.sm_count);
  const int64_t want = ceil_div(target_blocks, n * groups);
  const int64_t most = std::max<int64_t>(1, p.group_len / kGnMinChunkElements);
  p.chunks = std::clamp<int64_t>(want, 1, std::min(most, kGnMaxChunks));
  p.chunk_len = ceil_div(p.group_len, p.chunks);
  p.chunks = ceil_div(p.group_len, p.chunk_len);
  p.items = n * groups * p.chunks;
  p.segment = kGnThreads;
  while (p.segment > 1 && p.segment / 2 >= p.group_len) p.segment /= 2;
  p.group_blocks = ceil_div(p.items, kGnThreads / p.segment);
  p.grid = std::min(p.group_blocks, d.max_grid[0]);
  p.channel_blocks = param_grads ? (channels_last ? ceil_div(c, kGnChannelTile) : c) : 0;
  p.backward_grid = std::min(p.group_blocks + p.channel_blocks, d.max_grid[0]);
  return p;
}

}  // namespace norm_ext::plans
