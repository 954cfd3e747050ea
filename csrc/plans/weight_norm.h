#pragma once
// Launch plan of the weight-norm GPU kernels (cuda/weight_norm.cuh): one block per slice of v, which
// reduces the slice and then rescales it; blocks stride over the slices beyond the grid's limit.

#include <algorithm>
#include <cstdint>

#include "plans/device.h"

namespace norm_ext::plans {

inline constexpr int kWnThreads = 512;

inline int64_t plan_weight_norm_grid(int64_t slices, const DeviceProps& d) {
  return std::min(slices, d.max_grid[0]);
}

}  // namespace norm_ext::plans
