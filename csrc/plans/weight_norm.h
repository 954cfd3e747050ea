#pragma once
// Launch plan of the weight-norm GPU kernels (cuda/weight_norm.cuh). v is viewed as (outer, slices,
// inner).
//   - Slices long inside (inner >= a warp): each slice is cut into chunks, one block per (slice,
//     chunk), consecutive threads on consecutive elements: enough blocks to fill the GPU when the
//     slices are few (dim=None is one slice of the whole weight), but no chunk shorter than a few
//     passes of a block.
//   - Slices short inside (inner < a warp: dim the last, a conv weight along dim=1, a 1-D weight):
//     walked the slice's way, a warp's lanes would stride `slices * inner` elements apart. Read across
//     instead: v as `outer` rows of `slices * inner` contiguous columns, a block per (tile of
//     kWnLanes columns, chunk of rows), lanes on consecutive columns, kWnRowLanes rows at a time; each
//     column's partial sum over the chunk is folded into its slice's total by the next kernel.
// Blocks stride over the items beyond the grid's limit.

#include <algorithm>
#include <cstdint>

#include "plans/device.h"

namespace norm_ext::plans {

inline constexpr int kWnThreads = 512;
inline constexpr int kWnLanes = 32;
inline constexpr int kWnRowLanes = kWnThreads / kWnLanes;
// At most one partial per thread of the merging block.
inline constexpr int64_t kWnMaxChunks = kWnThreads;
inline constexpr int64_t kWnMinChunkElements = 8 * kWnThreads;
// Column view: a chunk gives each row lane at least this many rows.
inline constexpr int64_t kWnMinChunkRows = 8 * kWnRowLanes;

struct WeightNormPlan {
  bool columns;       // the column view
  int64_t chunks;     // per slice (per column in the column view)
  int64_t chunk_len;  // elements of a slice (rows in the column view)
  int64_t tiles;      // column view: tiles of kWnLanes columns; 1 otherwise
  int64_t items;      // blocks' work items: slices * chunks, or tiles * chunks
  int64_t partials;   // partial sums the first kernel stores
  int64_t grid;
};

inline WeightNormPlan plan_weight_norm(int64_t outer, int64_t slices, int64_t inner, const DeviceProps& d) {
  WeightNormPlan p{};
  p.columns = inner < kWnLanes;
  const int64_t tiles = p.columns ? ceil_div(slices * inner, int64_t{kWnLanes}) : 1;
  const int64_t units = p.columns ? tiles : slices;
  const int64_t length = p.columns ? outer : outer * inner;
  const int64_t want = ceil_div(4 * static_cast<int64_t>(d.sm_count), units);
  const int64_t most = std::max<int64_t>(1, length / (p.columns ? kWnMinChunkRows : kWnMinChunkElements));
  p.chunks = std::clamp<int64_t>(want, 1, std::min(most, kWnMaxChunks));
  p.chunk_len = ceil_div(length, p.chunks);
  p.chunks = ceil_div(length, p.chunk_len);
  p.tiles = tiles;
  p.items = units * p.chunks;
  p.partials = p.columns ? p.chunks * slices * inner : p.items;
  p.grid = std::min(p.items, d.max_grid[0]);
  return p;
}

}  // namespace norm_ext::plans
