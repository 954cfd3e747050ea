#pragma once
// Warp and block all-reductions for CUDA kernels: plain sums, pairs of sums and Welford states.
//
// Every reduction is an all-reduce (each participating thread receives the result) and is
// deterministic: the combination order depends only on lane and warp indices. The butterfly steps
// always combine (lower lane, upper lane) in that order, so a non-commutative operation such as the
// Welford merge leaves the same bits in every lane; threads of one row never disagree on its mean.

#include "common/welford.h"
#include "cuda/device_api.h"

namespace norm_ext {
inline namespace NORM_EXT_GPU_NAMESPACE {

constexpr int kWarpSize = 32;
// Slots a block reduction needs in shared memory: one per warp (at most 32) plus the result.
constexpr int kBlockReduceSlots = kWarpSize + 1;

// Two sums reduced together, so that a kernel needing both pays for one reduction's barriers.
template <typename T>
struct SumPair {
  T first;
  T second;
};

template <typename T>
__host__ __device__ __forceinline__ SumPair<T> operator+(const SumPair<T>& a, const SumPair<T>& b) {
  return {a.first + b.first, a.second + b.second};
}

struct SumOp {
  template <typename T>
  __device__ __forceinline__ T operator()(const T& a, const T& b) const {
    return a + b;
  }
};

struct WelfordMergeOp {
  template <typename acc_t>
  __device__ __forceinline__ WelfordState<acc_t> operator()(const WelfordState<acc_t>& a,
                                                            const WelfordState<acc_t>& b) const {
    return welford_merge(a, b);
  }
};

__device__ __forceinline__ float shfl_xor(float v, int mask) {
  return __shfl_xor_sync(0xffffffffu, v, mask);
}
__device__ __forceinline__ double shfl_xor(double v, int mask) {
  return __shfl_xor_sync(0xffffffffu, v, mask);
}

template <typename T>
__device__ __forceinline__ SumPair<T> shfl_xor(const SumPair<T>& v, int mask) {
  return {shfl_xor(v.first, mask), shfl_xor(v.second, mask)};
}

template <typename T>
__device__ __forceinline__ WelfordState<T> shfl_xor(const WelfordState<T>& v, int mask) {
  return {shfl_xor(v.count, mask), shfl_xor(v.mean, mask), shfl_xor(v.m2, mask)};
}

// All-reduce over aligned groups of kWidth lanes (a power of two <= 32). The whole warp must be
// converged and call it.
template <int kWidth = kWarpSize, typename T, typename Op>
__device__ __forceinline__ T warp_allreduce(T v, Op op) {
  static_assert(kWidth > 0 && kWidth <= kWarpSize && (kWidth & (kWidth - 1)) == 0, "width must be a power of 2");
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
#pragma unroll
  for (int mask = 1; mask < kWidth; mask <<= 1) {
    const T other = shfl_xor(v, mask);
    v = (lane & mask) ? op(other, v) : op(v, other);
  }
  return v;
}

// The butterfly steps of warp_allreduce for lane masks first, 2 * first, ... below `end` (powers of
// two <= 32): with (1, w), an all-reduce over aligned groups of w lanes; with (w, 32), over the lanes
// of the warp that sit at the same position of their group.
template <typename T, typename Op>
__device__ __forceinline__ T warp_allreduce_masks(T v, Op op, int first, int end) {
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
#pragma unroll
  for (int mask = 1; mask < kWarpSize; mask <<= 1) {
    if (mask >= first && mask < end) {
      const T other = shfl_xor(v, mask);
      v = (lane & mask) ? op(other, v) : op(v, other);
    }
  }
  return v;
}

// All-reduce over the whole block. Requires a 1-D block whose size is a multiple of 32, called by
// every thread. `slots` is shared memory of kBlockReduceSlots elements. Back-to-back calls may reuse
// the same slots: partials and the result live in different slots, and a call's first barrier is
// only passed once every thread has read the previous result.
template <typename T, typename Op>
__device__ __forceinline__ T block_allreduce(T v, Op op, T identity, T* slots) {
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int num_warps = static_cast<int>(blockDim.x) / kWarpSize;
  v = warp_allreduce(v, op);
  if (lane == 0) slots[warp] = v;
  __syncthreads();
  if (warp == 0) {
    T w = lane < num_warps ? slots[lane] : identity;
    w = warp_allreduce(w, op);
    if (lane == 0) slots[kWarpSize] = w;
  }
  __syncthreads();
  return slots[kWarpSize];
}

template <typename T>
__device__ __forceinline__ T block_allreduce_sum(T v, T* slots) {
  return block_allreduce(v, SumOp{}, T{}, slots);
}

template <typename acc_t>
__device__ __forceinline__ WelfordState<acc_t> block_allreduce_welford(const WelfordState<acc_t>& s,
                                                                       WelfordState<acc_t>* slots) {
  return block_allreduce(s, WelfordMergeOp{}, welford_init<acc_t>(), slots);
}

}  // namespace NORM_EXT_GPU_NAMESPACE
}  // namespace norm_ext
