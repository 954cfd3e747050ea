#pragma once
// Deterministic block-wide sum for CUDA kernels: a warp-shuffle tree within each warp, then the warp
// totals reduced by the first warp in warp order. The order of additions depends only on blockDim.

#include "cuda/device_api.h"

namespace norm_ext {
inline namespace NORM_EXT_GPU_NAMESPACE {

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_down_sync(0xffffffffu, value, offset);
  return value;
}

// Every thread of the block must call it; all receive the total. `scratch` holds 32 values.
template <typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t value, acc_t* scratch) {
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int warps = (blockDim.x + 31) / 32;
  value = warp_sum(value);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  if (warp == 0) {
    value = lane < warps ? scratch[lane] : acc_t(0);
    value = warp_sum(value);
    if (lane == 0) scratch[0] = value;
  }
  __syncthreads();
  return scratch[0];
}

}  // namespace NORM_EXT_GPU_NAMESPACE
}  // namespace norm_ext
