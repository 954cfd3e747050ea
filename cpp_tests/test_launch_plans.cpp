// Unit tests of the launch plans (csrc/plans) at the sm_90 properties of an H100/H200: which path each
// shape class takes, the block / cluster / grid sizes, that no grid exceeds the device's limits
// (shapes beyond them are strided over, never truncated), the launch checks and the occupancy model.
// Plain C++: no torch, no GPU. Run by ctest and by tests/test_launch_plans.py.

#include <cstdint>
#include <cstdio>
#include <string>

#include "plans/batch_norm.h"
#include "plans/device.h"
#include "plans/group_norm.h"
#include "plans/power_norm.h"
#include "plans/row_norm.h"
#include "plans/weight_norm.h"

namespace {

using namespace norm_ext::plans;

int g_failures = 0;
int g_checks = 0;

#define CHECK(cond)                                                        \
  do {                                                                     \
    ++g_checks;                                                            \
    if (!(cond)) {                                                         \
      ++g_failures;                                                        \
      std::printf("%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
    }                                                                      \
  } while (0)

#define CHECK_EQ(a, b)                                                                          \
  do {                                                                                          \
    ++g_checks;                                                                                 \
    const auto va = (a);                                                                        \
    const auto vb = (b);                                                                        \
    if (!(va == vb)) {                                                                          \
      ++g_failures;                                                                             \
      std::printf("%s:%d: CHECK_EQ(%s, %s) failed: %lld vs %lld\n", __FILE__, __LINE__, #a, #b, \
                  static_cast<long long>(va), static_cast<long long>(vb));                      \
    }                                                                                           \
  } while (0)

const DeviceProps& d = kH200;

// The occupancy model stands in for the driver's queries, as in the SIMT backend.
int model_clusters(int blocks, int threads) {
  return occupancy_max_clusters(d, blocks, threads, 0);
}

int model_blocks_per_sm(int, int threads, int64_t smem) {
  return occupancy_blocks_per_sm(d, threads, smem);
}

bool within_limits(const std::array<int64_t, 3>& grid) {
  return grid[0] >= 1 && grid[0] <= d.max_grid[0] && grid[1] >= 1 && grid[1] <= d.max_grid[1] && grid[2] >= 1 &&
         grid[2] <= d.max_grid[2];
}

// ----- row norms ------------------------------------------------------------------------------------

void test_row_norm_forward_paths() {
  // bf16 rows: 8 elements per 128-bit vector.
  const int vec = 8;
  struct Case {
    int64_t cols;
    RowPath path;
    int vecs;
    int threads;
    int cluster;
  };
  const Case cases[] = {
      {8, RowPath::kWarp, 1, 128, 1},           // one vector per lane
      {256, RowPath::kWarp, 1, 128, 1},         // 32 vectors: one per lane of the warp
      {512, RowPath::kWarp, 2, 128, 1},         //
      {1024, RowPath::kWarp, 4, 128, 1},        // 128 vectors: the warp's limit
      {1032, RowPath::kBlock, 4, 64, 1},        // 129 vectors: block mode
      {8192, RowPath::kBlock, 4, 256, 1},       // 1024 vectors: 4 per thread up to 256 threads
      {8200, RowPath::kBlock, 8, 160, 1},       // then 8 per thread
      {32768, RowPath::kBlock, 8, 512, 1},      // 4096 vectors: one block's registers
      {40000, RowPath::kCluster, 8, 160, 4},    // 5000 vectors over 4 blocks of 1250
      {65536, RowPath::kCluster, 8, 256, 4},    // 8192 vectors: 4 x 256 threads
      {131072, RowPath::kCluster, 8, 256, 8},   //
      {262144, RowPath::kCluster, 8, 512, 8},   // 8 x 512 threads
      {524288, RowPath::kCluster, 8, 512, 16},  // the non-portable 16-block cluster
      {524296, RowPath::kStream, 0, 512, 1},    // past what 16 blocks hold
  };
  for (const Case& c : cases) {
    const RowNormFwdPlan p = plan_row_norm_fwd(1000, c.cols, vec, d, model_clusters);
    if (p.path != c.path || p.vecs_per_thread != c.vecs || p.threads != c.threads || p.cluster != c.cluster) {
      std::printf("row fwd cols=%lld: got %s vecs=%d threads=%d cluster=%d\n", static_cast<long long>(c.cols),
                  row_path_name(p.path), p.vecs_per_thread, p.threads, p.cluster);
    }
    CHECK(p.path == c.path);
    CHECK_EQ(p.vecs_per_thread, c.vecs);
    CHECK_EQ(p.threads, c.threads);
    CHECK_EQ(p.cluster, c.cluster);
    CHECK_EQ(p.grid % p.cluster, 0);
  }
  // Rows of fewer than 32 vectors take a power-of-two slice of a warp: more than half its lanes work.
  CHECK_EQ(plan_row_norm_fwd(1000, 256, vec, d, model_clusters).threads_per_row, 32);
  CHECK_EQ(plan_row_norm_fwd(1000, 8, vec, d, model_clusters).threads_per_row, 1);
  CHECK_EQ(plan_row_norm_fwd(1000, 24, vec, d, model_clusters).threads_per_row, 4);
  const RowNormFwdPlan narrow = plan_row_norm_fwd(8192, 1, 1, d, model_clusters);
  CHECK_EQ(narrow.threads_per_row, 1);
  CHECK_EQ(narrow.grid, 8192 / kRowWarpModeFwdThreads);
  for (int64_t nvec = 1; nvec <= 32; ++nvec) {
    const RowNormFwdPlan p = plan_row_norm_fwd(1000, nvec * vec, vec, d, model_clusters);
    CHECK(2 * nvec > p.threads_per_row);
    const RowNormBwdPlan b = plan_row_norm_bwd(1000, nvec * vec, vec, 4, d, model_blocks_per_sm, model_clusters);
    CHECK_EQ(b.threads_per_row, p.threads_per_row);
  }
  // A 2-block cluster never fits where one block does not: the plans start at 4.
  CHECK_EQ(kRowClusterShapes[0].blocks, 4);
  CHECK(plan_row_norm_fwd(1000, 4096 * 8 + 8, 8, d, model_clusters).cluster == 4);
  CHECK(plan_row_norm_bwd(1000, 1024 * 8 + 8, 8, 4, d, model_blocks_per_sm, model_clusters).cluster == 4);
  // Misaligned rows (vec 1) never cluster: they stream once past one block.
  CHECK(plan_row_norm_fwd(100, 4096, 1, d, model_clusters).path == RowPath::kBlock);
  CHECK(plan_row_norm_fwd(100, 4097, 1, d, model_clusters).path == RowPath::kStream);
  // A device without clusters streams long rows.
  DeviceProps a100 = d;
  a100.major = 8;
  CHECK(plan_row_norm_fwd(100, 65536, vec, a100, model_clusters).path == RowPath::kStream);
  // Or one that refuses every cluster shape.
  CHECK(plan_row_norm_fwd(100, 65536, vec, d, [](int, int) { return 0; }).path == RowPath::kStream);
}

void test_row_norm_backward_paths() {
  const int vec = 8;
  struct Case {
    int64_t cols;
    RowPath path;
    int vecs;
    int threads;
    int cluster;
  };
  const Case cases[] = {
      {256, RowPath::kWarp, 1, 256, 1},         // 32 vectors, 8 rows per block
      {512, RowPath::kWarp, 2, 256, 1},         // 64 vectors
      {520, RowPath::kBlock, 2, 64, 1},         // 65 vectors
      {8192, RowPath::kBlock, 2, 512, 1},       // 1024 vectors: the register path's limit
      {8200, RowPath::kCluster, 2, 160, 4},     // 1025 vectors: 2 blocks would need 257 threads
      {65536, RowPath::kCluster, 2, 512, 8},    //
      {131072, RowPath::kCluster, 2, 512, 16},  // 16384 vectors: 16 blocks
      {262144, RowPath::kStream, 0, 512, 1},    // past 16 blocks
  };
  for (const Case& c : cases) {
    const RowNormBwdPlan p = plan_row_norm_bwd(1000, c.cols, vec, 4, d, model_blocks_per_sm, model_clusters);
    if (p.path != c.path || p.vecs_per_thread != c.vecs || p.threads != c.threads || p.cluster != c.cluster) {
      std::printf("row bwd cols=%lld: got %s vecs=%d threads=%d cluster=%d\n", static_cast<long long>(c.cols),
                  row_path_name(p.path), p.vecs_per_thread, p.threads, p.cluster);
    }
    CHECK(p.path == c.path);
    CHECK_EQ(p.vecs_per_thread, c.vecs);
    CHECK_EQ(p.threads, c.threads);
    CHECK_EQ(p.cluster, c.cluster);
    CHECK(p.partials >= 1);
  }
  // Warp mode combines its rows' partials in shared memory: 2 x cols of float.
  CHECK_EQ(plan_row_norm_bwd(1000, 256, vec, 4, d, model_blocks_per_sm, model_clusters).smem, 2 * 256 * 4);
  CHECK_EQ(plan_row_norm_bwd(1000, 4096, vec, 4, d, model_blocks_per_sm, model_clusters).smem, 0);
  // Few rows: one partial row per row group, no idle blocks.
  CHECK_EQ(plan_row_norm_bwd(3, 4096, vec, 4, d, model_blocks_per_sm, model_clusters).grid, 3);
}

void test_row_norm_grids_stay_within_limits() {
  // 2^40 rows of 8 elements: the forward's grid-stride loop covers what the grid cannot.
  const int64_t rows = int64_t{1} << 40;
  const RowNormFwdPlan warp = plan_row_norm_fwd(rows, 8, 8, d, model_clusters);
  CHECK_EQ(warp.grid, d.max_grid[0]);
  const RowNormFwdPlan block = plan_row_norm_fwd(rows, 8192, 8, d, model_clusters);
  CHECK_EQ(block.grid, d.max_grid[0]);
  const RowNormFwdPlan stream = plan_row_norm_fwd(rows, 1 << 20, 8, d, model_clusters);
  CHECK_EQ(stream.grid, d.max_grid[0]);
  // The backward's register path: at most a few waves of blocks, each owning a row range.
  const RowNormBwdPlan reg = plan_row_norm_bwd(rows, 4096, 8, 4, d, model_blocks_per_sm, model_clusters);
  CHECK(reg.grid <= static_cast<int64_t>(d.sm_count) * d.max_blocks_per_sm);
  const RowNormBwdPlan streamed = plan_row_norm_bwd(rows, 1 << 20, 8, 4, d, model_blocks_per_sm, model_clusters);
  CHECK(within_limits({streamed.col_tiles, streamed.row_chunks, 1}));
  CHECK(streamed.grid <= d.max_grid[0]);
  // Clusters: as many as fit, each taking several rows.
  const RowNormFwdPlan cluster = plan_row_norm_fwd(rows, 65536, 8, d, model_clusters);
  CHECK(cluster.grid <= static_cast<int64_t>(model_clusters(4, 256)) * 4);
}

// ----- batch norm -----------------------------------------------------------------------------------

void test_batch_norm_plans() {
  // A contiguous (N, C) or (N, C, 1, 1) input is read as rows of channels.
  const BnView nc1 = bn_kernel_view({false, 64, 256, 1});
  CHECK(nc1.channels_last);
  CHECK_EQ(nc1.outer, 64);
  CHECK(!bn_kernel_view({false, 64, 256, 49}).channels_last);

  // Channels-first: splits over each channel's values, channels on y (strided past 65535).
  const BnReducePlan first = plan_bn_reduce({false, 32, 128, 56 * 56}, d);
  CHECK_EQ(first.grid[1], 128);
  CHECK(first.splits >= 1 && first.grid[0] == first.splits);
  CHECK_EQ(plan_bn_reduce({false, 2, 100000, 4}, d).grid[1], 100000 / 32);
  CHECK_EQ(plan_bn_reduce({false, 2, 100000, 4}, d).block[0], 8);
  CHECK_EQ(plan_bn_reduce({false, 64, 4000000, 4}, d).grid[1], d.max_grid[1]);
  // Channels of fewer than 256 values share a block: 8 x 16 = 128 values, two channels a block.
  const BnReducePlan short_channels = plan_bn_reduce({false, 8, 2048, 16}, d);
  CHECK_EQ(short_channels.block[0], 128);
  CHECK_EQ(short_channels.block[1], 2);
  CHECK_EQ(short_channels.grid[1], 1024);
  // Channels-last: 32 channels per block, splits over rows on y.
  const BnReducePlan last = plan_bn_reduce({true, 32 * 56 * 56, 128, 1}, d);
  CHECK_EQ(last.grid[0], 4);
  CHECK_EQ(last.block[0], kBnColumns);
  CHECK(last.splits <= d.max_grid[1]);
  CHECK_EQ(plan_bn_reduce({true, int64_t{1} << 40, 128, 1}, d).grid[1], d.sm_count * 8 / 4);
  // Fewer than 32 channels: a block row narrows to the next power of two, rows fill the block.
  const BnReducePlan one = plan_bn_reduce({true, 1 << 20, 1, 1}, d);
  CHECK_EQ(one.block[0], 1);
  CHECK_EQ(one.block[1], kBnThreads);
  const BnReducePlan three = plan_bn_reduce({true, 1 << 20, 3, 1}, d);
  CHECK_EQ(three.block[0], 4);
  CHECK_EQ(three.block[1], kBnThreads / 4);
  CHECK_EQ(plan_bn_reduce({true, 1 << 20, 17, 1}, d).block[0], kBnColumns);
  for (int64_t c = 1; c <= 130; ++c) {
    const int64_t columns = bn_columns(c);
    CHECK(2 * c > ceil_div(c, columns) * columns);  // more than half the lanes have a channel
  }

  // Element-wise: a block covers several small planes (7 x 7: 64 lanes each, 49 of them working);
  // planes beyond the grid are strided over on y; chunks per plane capped on x.
  const BnAffinePlan affine = plan_bn_affine({false, 1 << 20, 64, 49}, 1, d);
  CHECK_EQ(affine.block[0], 64);
  CHECK_EQ(affine.block[1], kBnThreads / 64);
  CHECK_EQ(affine.grid[0], 1);
  CHECK_EQ(affine.grid[1], d.max_grid[1]);
  const BnAffinePlan wide = plan_bn_affine({false, 8, 64, 56 * 56}, 8, d);
  CHECK_EQ(wide.block[0], kBnThreads);
  CHECK_EQ(wide.grid[0], 2);
  CHECK_EQ(wide.grid[1], 8 * 64);
  CHECK(within_limits(affine.grid));
  // Past a few blocks per SM a thread walks more of its plane, or more rows.
  CHECK_EQ(plan_bn_affine({false, 1, 1, int64_t{1} << 40}, 8, d).grid[0], 4 * d.sm_count);
  CHECK_EQ(plan_bn_affine({false, 1, 1, int64_t{1} << 40}, 8, d).block[0], kBnThreads);
  const BnAffinePlan rows = plan_bn_affine({true, 1 << 20, 16, 1}, 1, d);
  CHECK_EQ(rows.grid[0], 1);
  CHECK_EQ(rows.grid[1], 4 * d.sm_count);
  CHECK(within_limits(plan_bn_affine({true, int64_t{1} << 40, 3, 1}, 1, d).grid));
}

// ----- group norm -----------------------------------------------------------------------------------

void test_group_norm_plans() {
  // Few groups: chunks fill the GPU, but none shorter than 2048 elements.
  const GroupNormPlan few = plan_group_norm(1, 32, 64 * 64, 1, false, true, d);
  CHECK_EQ(few.group_len, 32 * 64 * 64);
  CHECK_EQ(few.chunks, 64);
  CHECK(few.chunk_len >= kGnMinChunkElements);
  // Its dweight / dbias: 32 channels, each cut into row splits of at least kGnMinSplitRows rows.
  CHECK_EQ(few.channel_items, 32);
  CHECK_EQ(few.channel_splits, 64 * 64 / kGnMinSplitRows);
  CHECK_EQ(few.channel_blocks, 32 * few.channel_splits);
  // Many groups: one chunk each.
  const GroupNormPlan many = plan_group_norm(64, 512, 32 * 32, 32, false, false, d);
  CHECK_EQ(many.chunks, 1);
  CHECK_EQ(many.items, 64 * 32);
  CHECK_EQ(many.segment, kGnThreads);
  CHECK_EQ(many.group_blocks, 64 * 32);
  // Groups shorter than a block share one: 49 values take segments of 64 threads, four per block.
  const GroupNormPlan small = plan_group_norm(32, 128, 7 * 7, 128, false, true, d);
  CHECK_EQ(small.segment, 64);
  CHECK_EQ(small.group_blocks, 32 * 128 / 4);
  CHECK_EQ(plan_group_norm(8, 4, 1, 4, false, false, d).segment, 1);
  CHECK_EQ(plan_group_norm(8, 4, 3, 4, false, false, d).segment, 4);
  for (int64_t len = 1; len <= 300; ++len) {
    const GroupNormPlan p = plan_group_norm(2, 1, len, 1, false, false, d);
    CHECK(2 * std::min(len, p.segment) > p.segment);  // more than half the segment has a value
  }
  CHECK_EQ(many.channel_blocks, 0);
  // Channels-last parameter gradients: 32 channels per block, one split for 200 rows.
  CHECK_EQ(plan_group_norm(2, 65, 100, 1, true, true, d).channel_blocks, 3);
  // Few channels over many rows: the splits fill the GPU, so that no channel's block is a tail.
  const GroupNormPlan narrow = plan_group_norm(16, 16, 64 * 64, 4, false, true, d);
  CHECK(narrow.channel_blocks >= d.sm_count);
  CHECK(narrow.split_rows >= kGnMinSplitRows);
  CHECK(narrow.channel_splits * narrow.split_rows >= 16 * 64 * 64);
  CHECK((narrow.channel_splits - 1) * narrow.split_rows < 16 * 64 * 64);
  CHECK_EQ(narrow.fold_grid, 1);
  CHECK(!narrow.tiled);
  // Channels-last groups narrower than a warp are tiled: InstanceNorm on 64 channels takes two tiles
  // of 32 per sample, chunks of rows, a partial per (sample, channel, chunk), and its dweight / dbias
  // come from those partials (no channel blocks).
  const GroupNormPlan inst = plan_group_norm(16, 64, 16 * 16, 64, true, true, d);
  CHECK(inst.tiled);
  CHECK_EQ(inst.tile_width, kGnChannelTile);
  CHECK_EQ(inst.tiles, 2);
  CHECK_EQ(inst.chunks, 16 * 16 / (kGnMinTileChunkPasses * kGnRowsPerPass));
  CHECK_EQ(inst.items, 16 * 2 * inst.chunks);
  CHECK_EQ(inst.partials, 16 * 64 * inst.chunks);
  CHECK_EQ(inst.channel_blocks, 0);
  // Fewer channels than a warp: the tile is the power of two that holds them, so no lane idles.
  const GroupNormPlan sixteen = plan_group_norm(16, 16, 64 * 64, 4, true, true, d);
  CHECK(sixteen.tiled && sixteen.tile_width == 16 && sixteen.tiles == 1);
  CHECK_EQ(plan_group_norm(2, 5, 100, 5, true, false, d).tile_width, 8);
  // Groups as wide as a warp or wider keep the group walk, channels-last or not.
  CHECK(!plan_group_norm(2, 64, 100, 2, true, false, d).tiled);
  CHECK(!plan_group_norm(2, 64, 100, 64, false, false, d).tiled);
  // More (sample, group) pairs than a grid holds: the kernels stride, the grid is capped.
  const GroupNormPlan huge = plan_group_norm(int64_t{1} << 20, int64_t{1} << 12, 256, int64_t{1} << 12, false, true, d);
  CHECK_EQ(huge.segment, kGnThreads);
  CHECK(huge.group_blocks > d.max_grid[0]);
  CHECK_EQ(huge.grid, d.max_grid[0]);
  CHECK_EQ(huge.backward_grid, d.max_grid[0]);
}

// ----- power norm, weight norm ----------------------------------------------------------------------

void test_power_and_weight_norm_plans() {
  const PowerNormPlan small = plan_power_norm(100, 96, d);
  CHECK_EQ(small.block_tokens, kPnMinTokensPerBlock);
  CHECK_EQ(small.token_blocks, 2);
  CHECK_EQ(small.reduce_grid[0], 3);
  CHECK_EQ(small.width, kPnLanes);
  // Fewer channels than a warp: warp rows of the power of two that holds them.
  CHECK_EQ(plan_power_norm(100, 16, d).width, 16);
  CHECK_EQ(plan_power_norm(100, 16, d).reduce_grid[0], 1);
  CHECK_EQ(plan_power_norm(100, 5, d).width, 8);
  CHECK_EQ(plan_power_norm(100, 1, d).width, 1);
  CHECK_EQ(plan_power_norm(100, 40, d).reduce_grid[0], 2);
  const PowerNormPlan big = plan_power_norm(int64_t{1} << 30, 4096, d);
  CHECK(big.token_blocks <= kPnMaxTokenBlocks);
  CHECK(within_limits(big.reduce_grid));
  CHECK_EQ(big.forward_grid, d.sm_count * 8);
  // v as (outer, slices, inner). Many slices, long inside (dim=0 of a 4096 x 4096 weight): one block
  // each. Few large slices (dim=None: one): chunks fill the GPU.
  const WeightNormPlan rows = plan_weight_norm(1, 4096, 4096, d);
  CHECK(!rows.columns);
  CHECK_EQ(rows.chunks, 1);
  CHECK_EQ(rows.grid, 4096);
  const WeightNormPlan whole = plan_weight_norm(1, 1, 4096 * 4096, d);
  CHECK_EQ(whole.chunks, std::min<int64_t>(4 * d.sm_count, kWnMaxChunks));
  CHECK(whole.chunks >= d.sm_count);
  CHECK(whole.chunks * whole.chunk_len >= 4096 * 4096 && whole.grid == whole.chunks);
  CHECK_EQ(plan_weight_norm(1, 1, 1000, d).chunks, 1);
  CHECK(plan_weight_norm(1, 1, int64_t{1} << 40, d).chunks <= kWnMaxChunks);
  CHECK_EQ(plan_weight_norm(1, int64_t{3} << 30, 64, d).grid, d.max_grid[0]);
  // Slices short inside (dim the last of a 1M x 20 weight): the column view, a tile of 32 columns cut
  // into row chunks of at least kWnMinChunkRows, a partial per (chunk, column).
  const WeightNormPlan cols = plan_weight_norm(int64_t{1} << 20, 20, 1, d);
  CHECK(cols.columns);
  CHECK_EQ(cols.tiles, 1);
  CHECK_EQ(cols.chunks, kWnMaxChunks);
  CHECK(cols.chunk_len >= kWnMinChunkRows);
  CHECK_EQ(cols.partials, kWnMaxChunks * 20);
  CHECK_EQ(plan_weight_norm(8, 300, 3, d).tiles, (300 * 3 + kWnLanes - 1) / kWnLanes);
  CHECK_EQ(plan_weight_norm(8, 300, 3, d).chunks, 1);
}

// ----- launch checks and occupancy -------------------------------------------------------------------

void test_launch_checks() {
  const KernelAttributes none{};
  const auto shape = [](int64_t gx, int64_t bx, int64_t smem = 0, int64_t cluster = 1) {
    return LaunchShape{{gx, 1, 1}, {bx, 1, 1}, smem, cluster};
  };
  CHECK(launch_error(shape(1, 1024), none, d).empty());
  CHECK(launch_error(shape(1, 1025), none, d).find("1025 threads") != std::string::npos);
  CHECK(launch_error(shape(0, 32), none, d).find("empty grid") != std::string::npos);
  CHECK(launch_error({{1, 65536, 1}, {32, 1, 1}, 0, 1}, none, d).find("grid dimension y") != std::string::npos);
  CHECK(launch_error({{1, 1, 1}, {1, 1, 65}, 0, 1}, none, d).find("block dimension z") != std::string::npos);
  // Shared memory: 48 KB without the opt-in, up to 227 KB with it.
  CHECK(launch_error(shape(1, 32, 48 * 1024), none, d).empty());
  CHECK(!launch_error(shape(1, 32, 48 * 1024 + 1), none, d).empty());
  CHECK(!launch_error(shape(1, 32, 40 * 1024), none, d, 9 * 1024).empty());
  KernelAttributes opted{};
  opted.max_dynamic_smem = 200 * 1024;
  CHECK(launch_error(shape(1, 32, 200 * 1024), opted, d).empty());
  opted.max_dynamic_smem = 300 * 1024;
  CHECK(launch_error(shape(1, 32, 227 * 1024), opted, d).empty());
  CHECK(!launch_error(shape(1, 32, 227 * 1024 + 1), opted, d).empty());
  // Clusters: dividing the grid, 8 blocks portably, 16 with the attribute, sm_90 only.
  CHECK(launch_error(shape(16, 32, 0, 8), none, d).empty());
  CHECK(launch_error(shape(12, 32, 0, 8), none, d).find("does not divide") != std::string::npos);
  CHECK(!launch_error(shape(16, 32, 0, 16), none, d).empty());
  KernelAttributes non_portable{};
  non_portable.non_portable_cluster = true;
  CHECK(launch_error(shape(32, 32, 0, 16), non_portable, d).empty());
  CHECK(!launch_error(shape(32, 32, 0, 32), non_portable, d).empty());
  DeviceProps a100 = d;
  a100.major = 8;
  CHECK(launch_error(shape(2, 32, 0, 2), none, a100).find("sm_90") != std::string::npos);
}

void test_occupancy_model() {
  // Threads bound it (2048 per SM), or registers (64K per SM, 64 per thread assumed).
  CHECK_EQ(occupancy_blocks_per_sm(d, 1024, 0, 32), 2);
  CHECK_EQ(occupancy_blocks_per_sm(d, 1024, 0), 1);
  CHECK_EQ(occupancy_blocks_per_sm(d, 256, 0), 4);
  CHECK_EQ(occupancy_blocks_per_sm(d, 256, 0, 32), 8);
  CHECK_EQ(occupancy_blocks_per_sm(d, 32, 0, 32), 32);  // the block limit
  // Shared memory bounds it (with 1 KB reserved per block): 228 KB / (100 + 1) KB.
  CHECK_EQ(occupancy_blocks_per_sm(d, 32, 100 * 1024, 32), 2);
  CHECK_EQ(occupancy_blocks_per_sm(d, 2048, 0), 0);
  // Clusters share a GPC: with 2 blocks of 512 threads per SM, two 16-block clusters fit a GPC of 16
  // or 18 SMs and one a GPC of 14.
  CHECK_EQ(occupancy_max_clusters(d, 16, 512, 0), 2 * 4 + 2 * 2 + 1 * 2);
  CHECK(occupancy_max_clusters(d, 2, 256, 0) > occupancy_max_clusters(d, 8, 256, 0));
}

}  // namespace

int main() {
  test_row_norm_forward_paths();
  test_row_norm_backward_paths();
  test_row_norm_grids_stay_within_limits();
  test_batch_norm_plans();
  test_group_norm_plans();
  test_power_and_weight_norm_plans();
  test_launch_checks();
  test_occupancy_model();
  std::printf("%d passed, %d failed\n", g_checks - g_failures, g_failures);
  return g_failures == 0 ? 0 : 1;
}
