#pragma once
// Launch plans of the row norms (LayerNorm, RMSNorm and their fused residual forms): which kernel
// path a rows x cols problem takes on a device, with what block, cluster and grid. Plain C++; the
// GPU backend (cuda/row_norm.cuh) turns a plan into launches, cpp_tests/test_launch_plans.cpp pins
// the path of every shape class.
//
// Paths, by the row length in 128-bit vectors (nvec = cols / vec, vec = 16 / sizeof(input), or 1
// when a pointer or the row length is not vector aligned):
//   - warp: one warp per row, several rows per block, for short rows; rows of fewer than 32
//     vectors take a power-of-two slice of a warp (the next at least their length), so that most
//     lanes hold a vector;
//   - block: one block per row, the row held in registers;
//   - cluster (sm_90): rows past one block's registers split over a thread-block cluster of 4-16
//     blocks, each holding a slice in registers and exchanging partial statistics through
//     distributed shared memory, so that the row is still read once;
//   - stream: rows too long for the registers are re-read from global memory; any length works.

#include <algorithm>
#include <cstdint>
#include <functional>

#include "plans/device.h"

namespace norm_ext::plans {

// Warp mode runs several rows per block; the backward uses more rows per block so that fewer
// dgamma/dbeta partial rows are written.
inline constexpr int kRowWarpModeFwdThreads = 128;
inline constexpr int kRowWarpModeBwdThreads = 256;
// Vectors per thread in the register paths. At most 512 threads per block leave 128 registers per
// thread, enough for 64 fp32 row elements forward; the backward keeps x_hat, g and the two
// parameter-gradient partials per element, hence fewer.
inline constexpr int kRowWarpModeMaxVecs = 4;
inline constexpr int kRowFwdMaxVecs = 8;
inline constexpr int kRowFwdMaxThreads = 512;
inline constexpr int kRowBwdMaxVecs = 2;
inline constexpr int kRowBwdMaxThreads = 512;
inline constexpr int kRowStreamThreads = 512;
// A backward block handles at least this many rows per row group once every SM has a block, which
// bounds the partial-sum traffic (grid x cols) relative to the input.
inline constexpr int64_t kRowMinRowsPerGroup = 8;
// The dgamma/dbeta partial rows are summed by blocks of kRowReduceCols columns x kRowReduceSplits.
inline constexpr int kRowReduceCols = 32;
inline constexpr int kRowReduceSplits = 8;

enum class RowPath { kWarp, kBlock, kCluster, kStream };

inline const char* row_path_name(RowPath p) {
  switch (p) {
    case RowPath::kWarp:
      return "warp";
    case RowPath::kBlock:
      return "block";
    case RowPath::kCluster:
      return "cluster";
    default:
      return "stream";
  }
}

// Cluster shapes for rows past the register path, tried in order: the first whose slice fits the
// block's registers and which the device can schedule. 256-thread blocks first, as in the register
// path (two blocks per SM overlap one's reductions with the other's loads); 16 blocks is beyond the
// portable cluster size and depends on the GPU's partitioning, hence last. No 2-block shape: one
// block's registers hold every row two 256-thread blocks could (4096 vectors forward, 1024 backward).
struct ClusterShape {
  int blocks;
  int max_threads;
};
inline constexpr ClusterShape kRowClusterShapes[] = {{4, 256}, {8, 256}, {8, 512}, {16, 512}};

// Clusters of `blocks` blocks of `threads` threads of the cluster kernel that fit on the device at
// once (0: none, or the device has no clusters).
using MaxClustersFn = std::function<int(int blocks, int threads)>;
// Blocks of the register-path backward kernel with `vecs` vectors per thread that fit on an SM.
using BlocksPerSmFn = std::function<int(int vecs, int threads, int64_t smem)>;

struct RowClusterLaunch {
  int blocks = 0;  // 0: no cluster shape fits
  int threads = 0;
  int max_clusters = 0;
};

// Threads per row of the warp path: a warp, or the next power of two of a shorter row's vectors.
inline int warp_path_threads_per_row(int64_t nvec) {
  int threads = 1;
  while (threads < nvec && threads < 32) threads *= 2;
  return threads;
}

inline int round_up_to_warps(int64_t threads) {
  return static_cast<int>(ceil_div(threads, 32) * 32);
}

inline RowClusterLaunch pick_row_cluster(int64_t nvec, int vecs_per_thread, const DeviceProps& d,
                                         const MaxClustersFn& max_clusters) {
  if (d.major < 9) return {};
  for (const ClusterShape& shape : kRowClusterShapes) {
    const int64_t slice = ceil_div(nvec, shape.blocks);
    if (slice > static_cast<int64_t>(shape.max_threads) * vecs_per_thread) continue;
    const int threads = round_up_to_warps(ceil_div(slice, vecs_per_thread));
    const int clusters = max_clusters(shape.blocks, threads);
    if (clusters > 0) return {shape.blocks, threads, clusters};
  }
  return {};
}

struct RowNormFwdPlan {
  RowPath path;
  int vecs_per_thread;  // register paths: vectors each thread holds (the kernel's kNV)
  int threads;
  int threads_per_row;  // warp: 32; block and cluster: all the block's threads
  int cluster = 1;      // blocks per cluster
  int64_t grid;         // blocks
};

// vec: the vector width in elements the launch can use (1 when misaligned). Misaligned rows keep
// streaming past the register path: they would need clusters far beyond 16 blocks.
inline RowNormFwdPlan plan_row_norm_fwd(int64_t rows, int64_t cols, int vec, const DeviceProps& d,
                                        const MaxClustersFn& max_clusters) {
  const int64_t nvec = cols / vec;
  const int64_t max_grid = d.max_grid[0];
  if (nvec <= 32 * kRowWarpModeMaxVecs) {
    const int vecs = nvec <= 32 ? 1 : nvec <= 64 ? 2 : kRowWarpModeMaxVecs;
    const int threads_per_row = warp_path_threads_per_row(nvec);
    return {RowPath::kWarp,  vecs, kRowWarpModeFwdThreads,
            threads_per_row, 1,    std::min(ceil_div(rows, kRowWarpModeFwdThreads / threads_per_row), max_grid)};
  }
  if (nvec <= static_cast<int64_t>(kRowFwdMaxThreads) * kRowFwdMaxVecs) {
    // The register file bounds the resident row data per SM either way; eight vectors per thread
    // from 256 threads on keeps at least two blocks per SM (the kNV=4 variant needs ~114 registers,
    // kNV=8 ~128), so one block's loads overlap another's reductions and stores.
    const int vecs = nvec <= 256 * kRowWarpModeMaxVecs ? kRowWarpModeMaxVecs : kRowFwdMaxVecs;
    const int threads = round_up_to_warps(ceil_div(nvec, vecs));
    return {RowPath::kBlock, vecs, threads, threads, 1, std::min(rows, max_grid)};
  }
  if (vec > 1) {
    const RowClusterLaunch c = pick_row_cluster(nvec, kRowFwdMaxVecs, d, max_clusters);
    if (c.blocks > 0) {
      return {RowPath::kCluster, kRowFwdMaxVecs, c.threads,
              c.threads,         c.blocks,       c.blocks * std::min<int64_t>(rows, c.max_clusters)};
    }
  }
  return {RowPath::kStream, 0, kRowStreamThreads, kRowStreamThreads, 1, std::min(rows, max_grid)};
}

struct RowNormBwdPlan {
  RowPath path;
  int vecs_per_thread;
  int threads;
  int threads_per_row;
  int cluster = 1;
  int64_t grid;          // blocks of the main kernel (register and cluster paths), or of the row-sums kernel
  int64_t smem = 0;      // dynamic shared memory (register path with several rows per block)
  int64_t partials = 0;  // dgamma/dbeta partial rows, reduced by a second kernel
  // Streaming path: the dx / partials kernel's grid of column tiles x row chunks.
  int64_t col_tiles = 0;
  int64_t row_chunks = 0;
};

// acc_bytes: sizeof the accumulation type (the warp-mode blocks combine their rows' partials in
// shared memory of 2 x cols of it).
inline RowNormBwdPlan plan_row_norm_bwd(int64_t rows, int64_t cols, int vec, int acc_bytes, const DeviceProps& d,
                                        const BlocksPerSmFn& blocks_per_sm, const MaxClustersFn& max_clusters) {
  const int64_t nvec = cols / vec;
  const int64_t sms = d.sm_count;
  if (nvec <= static_cast<int64_t>(kRowBwdMaxThreads) * kRowBwdMaxVecs) {
    const bool warp_mode = nvec <= 32 * kRowBwdMaxVecs;
    const int threads = warp_mode ? kRowWarpModeBwdThreads : round_up_to_warps(ceil_div(nvec, kRowBwdMaxVecs));
    const int threads_per_row = warp_mode ? warp_path_threads_per_row(nvec) : threads;
    const int rows_per_block = threads / threads_per_row;
    const int vecs = warp_mode && nvec <= 32 ? 1 : kRowBwdMaxVecs;
    const int64_t smem = rows_per_block > 1 ? 2 * cols * acc_bytes : 0;
    const int per_sm = std::max(blocks_per_sm(vecs, threads, smem), 1);
    const int64_t row_groups = ceil_div(rows, rows_per_block);
    const int64_t grid = std::min({sms * per_sm, std::max(sms, ceil_div(row_groups, kRowMinRowsPerGroup)), row_groups});
    return {warp_mode ? RowPath::kWarp : RowPath::kBlock, vecs, threads, threads_per_row, 1, grid, smem, grid};
  }
  if (vec > 1) {
    const RowClusterLaunch c = pick_row_cluster(nvec, kRowBwdMaxVecs, d, max_clusters);
    if (c.blocks > 0) {
      const int64_t clusters = std::min<int64_t>(rows, c.max_clusters);
      return {RowPath::kCluster, kRowBwdMaxVecs, c.threads, c.threads, c.blocks, c.blocks * clusters, 0, clusters};
    }
  }
  // About two waves of 512-thread blocks over the column tiles and row chunks.
  const int64_t col_tiles = ceil_div(nvec, kRowStreamThreads);
  const int64_t row_chunks = std::clamp<int64_t>(ceil_div(sms * 8, col_tiles), 1, std::min(rows, d.max_grid[1]));
  RowNormBwdPlan plan{RowPath::kStream, 0, kRowStreamThreads, kRowStreamThreads, 1, std::min(rows, d.max_grid[0]), 0,
                      row_chunks};
  plan.col_tiles = col_tiles;
  plan.row_chunks = row_chunks;
  return plan;
}

}  // namespace norm_ext::plans
