#pragma once
// Launch plan of the weight-norm GPU kernels (cuda/weight_norm.cuh). v is viewed as (outer, slices,
// inner); each slice is cut into chunks, one block per (slice, chunk): enough blocks to fill the GPU
// when the slices are few (dim=None is one slice of the whole weight), but no chunk shorter than a
// few passes of a block. Blocks stride over (slice, chunk) items beyond the grid's limit.

#include <algorithm>
#include <cstdint>

#include "plans/device.h"

namespace norm_ext::plans {

inline constexpr int kWnThreads = 512;
// At most one partial per thread of the merging block.
inline constexpr int64_t kWnMaxChunks = kWnThreads;
inline constexpr int64_t kWnMinChunkElements = 8 * kWnThreads;

struct WeightNormPlan {
  int64_t chunks;  // per slice
  int64_t chunk_len;
  int64_t items;  // slices * chunks
  int64_t grid;
};

inline WeightNormPlan plan_weight_norm(int64_t slices, int64_t per_slice, const DeviceProps& d) {
  WeightNormPlan p{};
  const int64_t want = ceil_div(4 * static_cast<int64_t>(d.sm_count), slices);
  const int64_t most = std::max<int64_t>(1, per_slice / kWnMinChunkElements);
  p.chunks = std::clamp<int64_t>(want, 1, std::min(most, kWnMaxChunks));
  p.chunk_len = ceil_div(per_slice, p.chunks);
  p.chunks = ceil_div(per_slice, p.chunk_len);
  p.items = slices * p.chunks;
  p.grid = std::min(p.items, d.max_grid[0]);
  return p;
}

}  // namespace norm_ext::plans
