#pragma once
// Launch plan of the PowerNorm GPU kernels (cuda/power_norm.cuh). Per-channel reductions use a 2-D
// grid: x picks `width` consecutive channels, y a block of tokens whose size depends only on the
// token count, so that results do not depend on the device; each block writes one row of partials,
// summed in order by a second kernel. A warp takes 32 / width consecutive tokens of `width` channels
// each, one channel per lane, so that it reads one coalesced run: width is 32, or for fewer channels
// the power of two that holds them (with C = 16, 32 lanes on one token would leave half idle).

#include <algorithm>
#include <array>
#include <cstdint>

#include "plans/device.h"

namespace norm_ext::plans {

inline constexpr int kPnLanes = 32;
inline constexpr int kPnRows = 8;
inline constexpr int64_t kPnMinTokensPerBlock = 64;
inline constexpr int64_t kPnMaxTokenBlocks = 512;
inline constexpr int kPnThreads = 256;

struct PowerNormPlan {
  int width;             // channels per warp row
  int64_t block_tokens;  // tokens per block of the reductions
  int64_t token_blocks;
  std::array<int64_t, 3> reduce_grid;
  int64_t finalize_grid;  // blocks of kPnThreads channels
  int64_t forward_grid;   // element-wise, blocks of kPnThreads striding over the input
};

inline PowerNormPlan plan_power_norm(int64_t tokens, int64_t channels, const DeviceProps& d) {
  const int64_t size = std::max(kPnMinTokensPerBlock, ceil_div(tokens, kPnMaxTokenBlocks));
  const int64_t blocks = ceil_div(tokens, size);
  const int64_t forward_grid =
      std::min<int64_t>(static_cast<int64_t>(d.sm_count) * 8, ceil_div(tokens * channels, kPnThreads));
  int width = kPnLanes;
  while (width > 1 && width / 2 >= channels) width /= 2;
  return {width,       size, blocks, {ceil_div(channels, int64_t{width}), blocks, 1}, ceil_div(channels, kPnThreads),
          forward_grid};
}

}  // namespace norm_ext::plans
