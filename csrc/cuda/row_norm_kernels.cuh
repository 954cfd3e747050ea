#pragma once
// Device code of the row-norm family (LayerNorm and RMSNorm, plain and with a fused residual add):
// the kernels of each path of plans/row_norm.h and their __device__ helpers. Compiled by nvcc for the
// CUDA backend and by the host compiler for the SIMT backend (cuda/device_api.h).
//
// Both register modes (warp and block) are one kernel: a "row group" is a warp or the whole block,
// and the reduction picks warp shuffles or the block reduction with a launch-uniform branch, which
// keeps the number of instantiations (and the build time) down.
//
// The backward writes one dgamma/dbeta partial row per block (each block owns a contiguous range of
// rows), and a second kernel sums the partials over blocks in a fixed order: the result is
// deterministic and no atomics are needed.

#include <ATen/OpMathType.h>

#include <cstdint>
#include <type_traits>
#include <utility>

#include "common/reduce.cuh"
#include "common/vec.h"
#include "common/welford.h"
#include "cuda/device_api.h"
#include "plans/row_norm.h"

namespace norm_ext {
inline namespace NORM_EXT_GPU_NAMESPACE {

using plans::ceil_div;
using plans::kRowBwdMaxThreads;
using plans::kRowBwdMaxVecs;
using plans::kRowFwdMaxThreads;
using plans::kRowFwdMaxVecs;
using plans::kRowReduceCols;
using plans::kRowReduceSplits;
using plans::kRowStreamThreads;

__device__ __forceinline__ float rsqrt_acc(float v) {
  return rsqrtf(v);
}
__device__ __forceinline__ double rsqrt_acc(double v) {
  return rsqrt(v);
}

// Affine parameters are stored in the input dtype or in float32. Which one is a launch-uniform
// flag rather than a template parameter, halving the instantiations for half / bf16.
struct AffineParams {
  const void* weight;  // null: w_eff = 1
  const void* bias;    // null: b = 0
  bool is_float;       // parameters are float32 while the input is half / bf16
  bool zero_centered;  // w_eff = 1 + weight
};

template <typename in_t, int kV>
__device__ __forceinline__ void load_param(const void* p, bool is_float, int64_t col,
                                           at::opmath_type<in_t> (&out)[kV]) {
  using acc_t = at::opmath_type<in_t>;
  if constexpr (std::is_same_v<acc_t, float> && !std::is_same_v<in_t, float>) {
    if (is_float) {
      const auto v = load_vector<float, kV>(static_cast<const float*>(p) + col);
#pragma unroll
      for (int i = 0; i < kV; ++i) out[i] = v.val[i];
      return;
    }
  }
  const auto v = load_vector<in_t, kV>(static_cast<const in_t*>(p) + col);
#pragma unroll
  for (int i = 0; i < kV; ++i) out[i] = static_cast<acc_t>(v.val[i]);
}

// The zero-centred offset is added in acc_t: a bf16 weight near zero would lose it otherwise.
template <typename in_t, int kV>
__device__ __forceinline__ void load_weight(const AffineParams& p, int64_t col, at::opmath_type<in_t> (&w)[kV]) {
  using acc_t = at::opmath_type<in_t>;
  if (p.weight == nullptr) {
#pragma unroll
    for (int i = 0; i < kV; ++i) w[i] = acc_t(1);
    return;
  }
  load_param<in_t, kV>(p.weight, p.is_float, col, w);
  if (p.zero_centered) {
#pragma unroll
    for (int i = 0; i < kV; ++i) w[i] += acc_t(1);
  }
}

template <typename in_t, int kV>
__device__ __forceinline__ void load_bias(const AffineParams& p, int64_t col, at::opmath_type<in_t> (&b)[kV]) {
  using acc_t = at::opmath_type<in_t>;
  if (p.bias == nullptr) {
#pragma unroll
    for (int i = 0; i < kV; ++i) b[i] = acc_t(0);
    return;
  }
  load_param<in_t, kV>(p.bias, p.is_float, col, b);
}

// ----------------------------------------------------------------------------------------------
// Forward

// in_t: input / output dtype. h_t: dtype of the normalised row as stored, which is the input itself
// or, for the fused ops, the residual stream (input dtype or float32).
template <typename in_t, typename h_t>
struct RowNormFwdArgs {
  const in_t* x;
  const h_t* residual;  // null for the plain ops
  h_t* residual_out;
  in_t* y;
  at::opmath_type<in_t>* mean;  // null for RMSNorm
  at::opmath_type<in_t>* rstd;
  AffineParams affine;
  int64_t rows;
  int64_t cols;
  at::opmath_type<in_t> eps;
  bool rms;
};

// Loads h = x, or h = x + residual rounded to h_t and stored to residual_out: the norm is taken of
// the rounded value, which is what the backward re-reads.
template <typename in_t, typename h_t, int kV>
__device__ __forceinline__ void load_fwd_vector(const RowNormFwdArgs<in_t, h_t>& a, int64_t offset,
                                                at::opmath_type<in_t> (&h)[kV]) {
  using acc_t = at::opmath_type<in_t>;
  const auto xv = load_vector<in_t, kV>(a.x + offset);
  if (a.residual != nullptr) {
    const auto rv = load_vector<h_t, kV>(a.residual + offset);
    AlignedVector<h_t, kV> hv;
#pragma unroll
    for (int i = 0; i < kV; ++i) {
      hv.val[i] = static_cast<h_t>(static_cast<acc_t>(xv.val[i]) + static_cast<acc_t>(rv.val[i]));
      h[i] = static_cast<acc_t>(hv.val[i]);
    }
    store_vector(a.residual_out + offset, hv);
  } else {
#pragma unroll
    for (int i = 0; i < kV; ++i) h[i] = static_cast<acc_t>(xv.val[i]);
  }
}

template <typename in_t, typename h_t, int kV>
__device__ __forceinline__ void store_fwd_vector(const RowNormFwdArgs<in_t, h_t>& a, int64_t offset, int64_t col,
                                                 const at::opmath_type<in_t> (&h)[kV], at::opmath_type<in_t> mean,
                                                 at::opmath_type<in_t> rstd) {
  using acc_t = at::opmath_type<in_t>;
  acc_t w[kV];
  acc_t b[kV];
  load_weight<in_t, kV>(a.affine, col, w);
  load_bias<in_t, kV>(a.affine, col, b);
  AlignedVector<in_t, kV> out;
#pragma unroll
  for (int i = 0; i < kV; ++i) out.val[i] = static_cast<in_t>((h[i] - mean) * rstd * w[i] + b[i]);
  store_vector(a.y + offset, out);
}

// The value LayerNorm's register-held rows are shifted by: the row's first element of h (0 for
// RMSNorm). For a row with a large offset (1e4 + 1e-2 * noise) the subtractions are exact, so the
// mean and the output keep the precision of the deviations instead of the fp32 ulp of the offset
// (a broadcast load, from L1).
template <typename in_t, typename h_t>
__device__ __forceinline__ at::opmath_type<in_t> row_shift(const RowNormFwdArgs<in_t, h_t>& a, int64_t row_offset) {
  using acc_t = at::opmath_type<in_t>;
  if (a.rms) return acc_t(0);
  const acc_t x0 = static_cast<acc_t>(a.x[row_offset]);
  if (a.residual == nullptr) return x0;
  return static_cast<acc_t>(static_cast<h_t>(x0 + static_cast<acc_t>(a.residual[row_offset])));
}

// h = one vector of the row minus shift, added to sum.
template <typename in_t, typename h_t, int kV>
__device__ __forceinline__ void load_shifted_fwd_vector(const RowNormFwdArgs<in_t, h_t>& a, int64_t offset,
                                                        at::opmath_type<in_t> shift, at::opmath_type<in_t> (&h)[kV],
                                                        at::opmath_type<in_t>& sum) {
  load_fwd_vector<in_t, h_t, kV>(a, offset, h);
#pragma unroll
  for (int i = 0; i < kV; ++i) {
    h[i] -= shift;
    sum += h[i];
  }
}

// Register path. Thread `lane` of a row group owns vectors lane, lane + threads_per_row, ... so a
// warp's loads are contiguous. A group is the block, a warp, or (rows of fewer than 32 vectors) a
// power-of-two slice of a warp, so that most lanes hold a vector. The variance is a second pass over
// the registers, never E[h^2] - E[h]^2, which cancels for rows with a large mean.
template <typename in_t, typename h_t, int kNV, int kV>
__global__ void __launch_bounds__(kRowFwdMaxThreads)
    row_norm_fwd_reg(const RowNormFwdArgs<in_t, h_t> a, const int threads_per_row) {
  using acc_t = at::opmath_type<in_t>;
  NORM_EXT_SHARED(acc_t, slots, [kBlockReduceSlots]);
  const bool warp_mode = threads_per_row <= kWarpSize;
  const int rows_per_block = static_cast<int>(blockDim.x) / threads_per_row;
  const int lane = static_cast<int>(threadIdx.x) % threads_per_row;
  const acc_t n = static_cast<acc_t>(a.cols);
  const auto row_sum = [&](acc_t v) {
    return warp_mode ? warp_allreduce_masks(v, SumOp{}, 1, threads_per_row) : block_allreduce_sum(v, slots);
  };

  // The loop runs while the block's first row exists, so that the groups of a warp shuffle together;
  // a group past the last row computes on zeros and stores nothing.
  const int64_t row_step = static_cast<int64_t>(gridDim.x) * rows_per_block;
  for (int64_t first = static_cast<int64_t>(blockIdx.x) * rows_per_block; first < a.rows; first += row_step) {
    const int64_t row = first + threadIdx.x / threads_per_row;
    const bool active = row < a.rows;
    const int64_t row_offset = row * a.cols;
    const acc_t shift = active ? row_shift(a, row_offset) : acc_t(0);
    acc_t h[kNV][kV];
    acc_t sum = 0;
#pragma unroll
    for (int k = 0; k < kNV; ++k) {
      const int64_t col = static_cast<int64_t>(lane + k * threads_per_row) * kV;
      if (active && col < a.cols) {
        load_shifted_fwd_vector<in_t, h_t, kV>(a, row_offset + col, shift, h[k], sum);
      } else {
#pragma unroll
        for (int i = 0; i < kV; ++i) h[k][i] = acc_t(0);
      }
    }
    const acc_t mean = a.rms ? acc_t(0) : row_sum(sum) / n;  // of the shifted row
    acc_t sq = 0;
#pragma unroll
    for (int k = 0; k < kNV; ++k) {
      const int64_t col = static_cast<int64_t>(lane + k * threads_per_row) * kV;
      if (active && col < a.cols) {
#pragma unroll
        for (int i = 0; i < kV; ++i) sq += (h[k][i] - mean) * (h[k][i] - mean);
      }
    }
    const acc_t rstd = rsqrt_acc(row_sum(sq) / n + a.eps);
    if (lane == 0 && active) {
      if (a.mean != nullptr) a.mean[row] = shift + mean;
      a.rstd[row] = rstd;
    }
#pragma unroll
    for (int k = 0; k < kNV; ++k) {
      const int64_t col = static_cast<int64_t>(lane + k * threads_per_row) * kV;
      if (active && col < a.cols) store_fwd_vector<in_t, h_t, kV>(a, row_offset + col, col, h[k], mean, rstd);
    }
  }
}

// Streaming path, one block per row. The first pass merges per-vector (count, mean, m2) into a
// per-thread Welford state (one division per vector, not per element); the second pass re-reads h
// (from residual_out for the fused ops: each thread re-reads exactly the elements it wrote).
template <typename in_t, typename h_t, int kV>
__global__ void __launch_bounds__(kRowStreamThreads) row_norm_fwd_stream(const RowNormFwdArgs<in_t, h_t> a) {
  using acc_t = at::opmath_type<in_t>;
  NORM_EXT_SHARED(WelfordState<acc_t>, welford_slots, [kBlockReduceSlots]);
  NORM_EXT_SHARED(acc_t, sum_slots, [kBlockReduceSlots]);
  const int64_t nvec = a.cols / kV;
  const acc_t n = static_cast<acc_t>(a.cols);
  const acc_t inv_kv = acc_t(1) / acc_t(kV);
  for (int64_t row = blockIdx.x; row < a.rows; row += gridDim.x) {
    const int64_t row_offset = row * a.cols;
    WelfordState<acc_t> state = welford_init<acc_t>();
    acc_t sum_sq = 0;
    for (int64_t j = threadIdx.x; j < nvec; j += blockDim.x) {
      acc_t h[kV];
      load_fwd_vector<in_t, h_t, kV>(a, row_offset + j * kV, h);
      if (a.rms) {
#pragma unroll
        for (int i = 0; i < kV; ++i) sum_sq += h[i] * h[i];
      } else {
        acc_t chunk_sum = 0;
#pragma unroll
        for (int i = 0; i < kV; ++i) chunk_sum += h[i];
        const acc_t chunk_mean = chunk_sum * inv_kv;
        acc_t chunk_m2 = 0;
#pragma unroll
        for (int i = 0; i < kV; ++i) chunk_m2 += (h[i] - chunk_mean) * (h[i] - chunk_mean);
        state = welford_merge(state, WelfordState<acc_t>{acc_t(kV), chunk_mean, chunk_m2});
      }
    }
    acc_t mean = 0;
    acc_t var;
    if (a.rms) {
      var = block_allreduce_sum(sum_sq, sum_slots) / n;
    } else {
      const WelfordState<acc_t> total = block_allreduce_welford(state, welford_slots);
      mean = total.mean;
      var = total.m2 / n;
    }
    const acc_t rstd = rsqrt_acc(var + a.eps);
    if (threadIdx.x == 0) {
      if (a.mean != nullptr) a.mean[row] = mean;
      a.rstd[row] = rstd;
    }
    for (int64_t j = threadIdx.x; j < nvec; j += blockDim.x) {
      const int64_t col = j * kV;
      acc_t h[kV];
      if (a.residual != nullptr) {
        const auto hv = load_vector<h_t, kV>(a.residual_out + row_offset + col);
#pragma unroll
        for (int i = 0; i < kV; ++i) h[i] = static_cast<acc_t>(hv.val[i]);
      } else {
        const auto xv = load_vector<in_t, kV>(a.x + row_offset + col);
#pragma unroll
        for (int i = 0; i < kV; ++i) h[i] = static_cast<acc_t>(xv.val[i]);
      }
      store_fwd_vector<in_t, h_t, kV>(a, row_offset + col, col, h, mean, rstd);
    }
  }
}

#if NORM_EXT_CLUSTER_KERNELS
// The vectors [begin, end) of a row of nvec that this block of its cluster holds: contiguous
// slices in rank order.
__device__ __forceinline__ std::pair<int64_t, int64_t> cluster_slice(const cooperative_groups::cluster_group& cluster,
                                                                     int64_t nvec) {
  const int64_t slice = ceil_div(nvec, cluster.num_blocks());
  const int64_t begin = std::min(cluster.block_rank() * slice, nvec);
  return {begin, std::min(begin + slice, nvec)};
}
#endif

// Cluster path (sm_90): rows too long for one block's registers are split over a thread-block
// cluster of 4-16 blocks, each holding a contiguous slice of the row in registers, so the row is
// still read once; the streaming path would read it twice, the second time from HBM once the rows
// in flight (a 256K bf16 row is 512 KB) outgrow L2. Each block reduces its slice to a Welford state
// (two passes over its registers, around the slice's own mean) and the blocks exchange those states
// through distributed shared memory; Chan's merge in rank order gives every block the same bits.
// For RMSNorm the state carries mean 0 and m2 = sum of squares, which the same merge just adds.
//
// The states are double-buffered by row parity, so one cluster barrier per row suffices: a block
// can only overwrite a buffer after the next row's barrier, which every block reaches after reading
// that buffer.
template <typename in_t, typename h_t, int kV>
__global__ void __launch_bounds__(kRowFwdMaxThreads) row_norm_fwd_cluster(const RowNormFwdArgs<in_t, h_t> a) {
#if NORM_EXT_CLUSTER_KERNELS
  using acc_t = at::opmath_type<in_t>;
  constexpr int kNV = kRowFwdMaxVecs;
  NORM_EXT_SHARED(acc_t, slots, [kBlockReduceSlots]);
  NORM_EXT_SHARED(WelfordState<acc_t>, cluster_states, [2]);
  const cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
  const int cluster_size = static_cast<int>(cluster.num_blocks());
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const auto [slice_begin, slice_end] = cluster_slice(cluster, a.cols / kV);
  const bool is_rank0 = cluster.block_rank() == 0;
  const acc_t slice_count = static_cast<acc_t>((slice_end - slice_begin) * kV);

  int parity = 0;
  for (int64_t row = blockIdx.x / cluster_size; row < a.rows; row += gridDim.x / cluster_size) {
    const int64_t row_offset = row * a.cols;
    // Every block reads the same shift, so all hold the same deviations.
    const acc_t shift = row_shift(a, row_offset);
    acc_t h[kNV][kV];
    acc_t sum = 0;
#pragma unroll
    for (int k = 0; k < kNV; ++k) {
      const int64_t j = slice_begin + threadIdx.x + k * static_cast<int64_t>(blockDim.x);
      if (j < slice_end) {
        load_shifted_fwd_vector<in_t, h_t, kV>(a, row_offset + j * kV, shift, h[k], sum);
      } else {
#pragma unroll
        for (int i = 0; i < kV; ++i) h[k][i] = acc_t(0);
      }
    }
    acc_t slice_mean = 0;
    if (!a.rms && slice_count > acc_t(0)) slice_mean = block_allreduce_sum(sum, slots) / slice_count;
    acc_t sq = 0;
#pragma unroll
    for (int k = 0; k < kNV; ++k) {
      const int64_t j = slice_begin + threadIdx.x + k * static_cast<int64_t>(blockDim.x);
      if (j < slice_end) {
#pragma unroll
        for (int i = 0; i < kV; ++i) sq += (h[k][i] - slice_mean) * (h[k][i] - slice_mean);
      }
    }
    sq = block_allreduce_sum(sq, slots);
    if (threadIdx.x == 0) cluster_states[parity] = WelfordState<acc_t>{slice_count, slice_mean, sq};
    cluster.sync();
    // Each warp merges the cluster's states itself (lane r reads block r's), which needs no further
    // barrier to broadcast the result.
    WelfordState<acc_t> total = welford_init<acc_t>();
    if (lane < cluster_size) total = *cluster.map_shared_rank(&cluster_states[parity], lane);
    total = warp_allreduce(total, WelfordMergeOp{});
    parity ^= 1;

    const acc_t mean = total.mean;  // of the shifted row; 0 for RMSNorm
    const acc_t rstd = rsqrt_acc(total.m2 / static_cast<acc_t>(a.cols) + a.eps);
    if (is_rank0 && threadIdx.x == 0) {
      if (a.mean != nullptr) a.mean[row] = shift + mean;
      a.rstd[row] = rstd;
    }
#pragma unroll
    for (int k = 0; k < kNV; ++k) {
      const int64_t j = slice_begin + threadIdx.x + k * static_cast<int64_t>(blockDim.x);
      if (j < slice_end) store_fwd_vector<in_t, h_t, kV>(a, row_offset + j * kV, j * kV, h[k], mean, rstd);
    }
  }
  // A block's shared memory must outlive the other blocks' reads of it.
  cluster.sync();
#else
  // Launched only when the kernel was compiled for sm_90 or later (checked on the host).
  __trap();
#endif
}

// ----------------------------------------------------------------------------------------------
// Backward

// saved_t: dtype of the saved tensor (input, residual stream h, or output) and of grad_input.
template <typename in_t, typename saved_t>
struct RowNormBwdArgs {
  const in_t* dy;
  const saved_t* saved;
  const saved_t* grad_residual;  // null: nothing added to grad_input
  saved_t* dx;
  const at::opmath_type<in_t>* mean;  // null for RMSNorm and when saved is the output
  const at::opmath_type<in_t>* rstd;
  AffineParams affine;  // bias only set when saved is the output (needed to recover x_hat)
  int64_t rows;
  int64_t cols;
  bool rms;
  bool saved_is_output;
};

// x_hat, dy and g = dy * w_eff of one vector, in acc_t.
template <typename in_t, typename saved_t, int kV>
__device__ __forceinline__ void load_bwd_vector(const RowNormBwdArgs<in_t, saved_t>& a, int64_t offset, int64_t col,
                                                at::opmath_type<in_t> mean, at::opmath_type<in_t> rstd,
                                                at::opmath_type<in_t> (&xhat)[kV], at::opmath_type<in_t> (&dy)[kV],
                                                at::opmath_type<in_t> (&g)[kV]) {
  using acc_t = at::opmath_type<in_t>;
  const auto sv = load_vector<saved_t, kV>(a.saved + offset);
  const auto dv = load_vector<in_t, kV>(a.dy + offset);
  acc_t w[kV];
  load_weight<in_t, kV>(a.affine, col, w);
  if (a.saved_is_output) {
    // Memory-efficient mode inverts y = x_hat * w_eff + b; a true division, since w_eff may be small.
    acc_t b[kV];
    load_bias<in_t, kV>(a.affine, col, b);
#pragma unroll
    for (int i = 0; i < kV; ++i) xhat[i] = (static_cast<acc_t>(sv.val[i]) - b[i]) / w[i];
  } else {
#pragma unroll
    for (int i = 0; i < kV; ++i) xhat[i] = (static_cast<acc_t>(sv.val[i]) - mean) * rstd;
  }
#pragma unroll
  for (int i = 0; i < kV; ++i) {
    dy[i] = static_cast<acc_t>(dv.val[i]);
    g[i] = dy[i] * w[i];
  }
}

template <typename in_t, typename saved_t, int kV>
__device__ __forceinline__ void store_bwd_vector(const RowNormBwdArgs<in_t, saved_t>& a, int64_t offset,
                                                 at::opmath_type<in_t> rstd, at::opmath_type<in_t> mean_g,
                                                 at::opmath_type<in_t> mean_gx, const at::opmath_type<in_t> (&xhat)[kV],
                                                 const at::opmath_type<in_t> (&g)[kV]) {
  using acc_t = at::opmath_type<in_t>;
  acc_t extra[kV];
  if (a.grad_residual != nullptr) {
    const auto rv = load_vector<saved_t, kV>(a.grad_residual + offset);
#pragma unroll
    for (int i = 0; i < kV; ++i) extra[i] = static_cast<acc_t>(rv.val[i]);
  } else {
#pragma unroll
    for (int i = 0; i < kV; ++i) extra[i] = acc_t(0);
  }
  AlignedVector<saved_t, kV> out;
#pragma unroll
  for (int i = 0; i < kV; ++i) {
    out.val[i] = static_cast<saved_t>(rstd * (g[i] - mean_g - xhat[i] * mean_gx) + extra[i]);
  }
  store_vector(a.dx + offset, out);
}

// The register-held step of the backward for one vector: loads its x_hat and g, and adds its terms
// to this thread's dgamma/dbeta partials and to the row sums of g and g * x_hat.
template <typename in_t, typename saved_t, int kV>
__device__ __forceinline__ void accumulate_bwd_vector(const RowNormBwdArgs<in_t, saved_t>& a, int64_t offset,
                                                      int64_t col, at::opmath_type<in_t> mean,
                                                      at::opmath_type<in_t> rstd, at::opmath_type<in_t> (&xhat)[kV],
                                                      at::opmath_type<in_t> (&g)[kV], at::opmath_type<in_t> (&dw)[kV],
                                                      at::opmath_type<in_t> (&db)[kV],
                                                      SumPair<at::opmath_type<in_t>>& sums) {
  using acc_t = at::opmath_type<in_t>;
  acc_t dy[kV];
  load_bwd_vector<in_t, saved_t, kV>(a, offset, col, mean, rstd, xhat, dy, g);
#pragma unroll
  for (int i = 0; i < kV; ++i) {
    dw[i] += dy[i] * xhat[i];
    db[i] += dy[i];
    sums.first += g[i];
    sums.second += g[i] * xhat[i];
  }
}

// The dgamma/dbeta partials of one thread's vector of columns, as vector stores: scalar stores of
// kV consecutive columns per lane would make each warp-wide store touch kV times the sectors it
// fills, and with few rows per block these partials are as large as the rows the block read.
template <typename acc_t, int kV>
__device__ __forceinline__ void store_param_partials(acc_t* dw_partial, acc_t* db_partial, int64_t offset,
                                                     const acc_t (&dw)[kV], const acc_t (&db)[kV]) {
  AlignedVector<acc_t, kV> w;
  AlignedVector<acc_t, kV> b;
#pragma unroll
  for (int i = 0; i < kV; ++i) {
    w.val[i] = dw[i];
    b.val[i] = db[i];
  }
  if (dw_partial != nullptr) store_vector(dw_partial + offset, w);
  if (db_partial != nullptr) store_vector(db_partial + offset, b);
}

// One row of the register-held backward, shared by the register and the cluster kernels: this
// thread's vector k sits at column col_of(k), or nowhere where that is negative. Loads x_hat and g,
// adds to the dgamma/dbeta partials and returns the thread's share of the two row sums.
template <typename in_t, typename saved_t, int kNV, int kV, typename ColOf>
__device__ __forceinline__ SumPair<at::opmath_type<in_t>> accumulate_bwd_row(
    const RowNormBwdArgs<in_t, saved_t>& a, int64_t row_offset, at::opmath_type<in_t> mean, at::opmath_type<in_t> rstd,
    const ColOf& col_of, at::opmath_type<in_t> (&xhat)[kNV][kV], at::opmath_type<in_t> (&g)[kNV][kV],
    at::opmath_type<in_t> (&dw)[kNV][kV], at::opmath_type<in_t> (&db)[kNV][kV]) {
  using acc_t = at::opmath_type<in_t>;
  SumPair<acc_t> sums{0, 0};
#pragma unroll
  for (int k = 0; k < kNV; ++k) {
    const int64_t col = col_of(k);
    if (col >= 0) {
      accumulate_bwd_vector<in_t, saved_t, kV>(a, row_offset + col, col, mean, rstd, xhat[k], g[k], dw[k], db[k], sums);
    } else {
#pragma unroll
      for (int i = 0; i < kV; ++i) xhat[k][i] = g[k][i] = acc_t(0);
    }
  }
  return sums;
}

// grad_input of the row that accumulate_bwd_row loaded, from its row means of g and g * x_hat.
template <typename in_t, typename saved_t, int kNV, int kV, typename ColOf>
__device__ __forceinline__ void store_bwd_row(const RowNormBwdArgs<in_t, saved_t>& a, int64_t row_offset,
                                              at::opmath_type<in_t> rstd, at::opmath_type<in_t> mean_g,
                                              at::opmath_type<in_t> mean_gx, const ColOf& col_of,
                                              const at::opmath_type<in_t> (&xhat)[kNV][kV],
                                              const at::opmath_type<in_t> (&g)[kNV][kV]) {
#pragma unroll
  for (int k = 0; k < kNV; ++k) {
    const int64_t col = col_of(k);
    if (col >= 0) store_bwd_vector<in_t, saved_t, kV>(a, row_offset + col, rstd, mean_g, mean_gx, xhat[k], g[k]);
  }
}

// Register path of the backward. Block b owns rows [rows * b / G, rows * (b + 1) / G); its row
// groups (as in the forward) walk them, keeping x_hat and g of the current row and their
// dgamma/dbeta partials in registers. At the end the groups of a warp fold their partials by
// shuffles, the warps (or block-wide groups) fold theirs through shared memory in order, and the
// last writes the block's partial row, so the result does not depend on scheduling.
template <typename in_t, typename saved_t, int kNV, int kV>
__global__ void __launch_bounds__(kRowBwdMaxThreads)
    row_norm_bwd_reg(const RowNormBwdArgs<in_t, saved_t> a, const int threads_per_row,
                     at::opmath_type<in_t>* dw_partial, at::opmath_type<in_t>* db_partial) {
  using acc_t = at::opmath_type<in_t>;
  NORM_EXT_SHARED(SumPair<acc_t>, slots, [kBlockReduceSlots]);
  NORM_EXT_DYNAMIC_SHARED(combine_raw);
  acc_t* combine = reinterpret_cast<acc_t*>(combine_raw);  // [2][cols], used when rows_per_block > 1
  const bool warp_mode = threads_per_row <= kWarpSize;
  const int rows_per_block = static_cast<int>(blockDim.x) / threads_per_row;
  const int group = static_cast<int>(threadIdx.x) / threads_per_row;
  const int lane = static_cast<int>(threadIdx.x) % threads_per_row;
  const acc_t n = static_cast<acc_t>(a.cols);
  const auto row_sums = [&](SumPair<acc_t> v) {
    return warp_mode ? warp_allreduce_masks(v, SumOp{}, 1, threads_per_row)
                     : block_allreduce(v, SumOp{}, SumPair<acc_t>{0, 0}, slots);
  };

  const auto col_of = [&](int k) {
    const int64_t col = static_cast<int64_t>(lane + k * threads_per_row) * kV;
    return col < a.cols ? col : int64_t(-1);
  };

  acc_t dw[kNV][kV] = {};
  acc_t db[kNV][kV] = {};
  const int64_t row_begin = a.rows * blockIdx.x / gridDim.x;
  const int64_t row_end = a.rows * (blockIdx.x + 1) / gridDim.x;
  for (int64_t first = row_begin; first < row_end; first += rows_per_block) {
    // A group past the block's last row loads and stores nothing but still joins the row sums,
    // which its warp shuffles together. (Folding `active` into col_of instead cost the 128-bit
    // stores of dx: nvcc split them per element.)
    const int64_t row = first + group;
    const bool active = row < row_end;
    const int64_t row_offset = row * a.cols;
    acc_t rstd = 0;
    acc_t mean = 0;
    acc_t xhat[kNV][kV];
    acc_t g[kNV][kV];
    SumPair<acc_t> part{0, 0};
    if (active) {
      rstd = a.rstd[row];
      if (a.mean != nullptr) mean = a.mean[row];
      part = accumulate_bwd_row<in_t, saved_t, kNV, kV>(a, row_offset, mean, rstd, col_of, xhat, g, dw, db);
    }
    const SumPair<acc_t> sums = row_sums(part);
    const acc_t mean_g = a.rms ? acc_t(0) : sums.first / n;
    const acc_t mean_gx = sums.second / n;
    if (active) store_bwd_row<in_t, saved_t, kNV, kV>(a, row_offset, rstd, mean_g, mean_gx, col_of, xhat, g);
  }

  // Groups narrower than a warp hold the same columns in the same lanes: the warp folds them first,
  // and its first group takes the warp's turn below.
  const bool sub_warp = threads_per_row < kWarpSize;
  if (sub_warp) {
#pragma unroll
    for (int k = 0; k < kNV; ++k) {
#pragma unroll
      for (int i = 0; i < kV; ++i) {
        dw[k][i] = warp_allreduce_masks(dw[k][i], SumOp{}, threads_per_row, kWarpSize);
        db[k][i] = warp_allreduce_masks(db[k][i], SumOp{}, threads_per_row, kWarpSize);
      }
    }
  }
  const int turns = sub_warp ? static_cast<int>(blockDim.x) / kWarpSize : rows_per_block;
  const int my_turn = sub_warp ? static_cast<int>(threadIdx.x) / kWarpSize : group;
  const bool folds = !sub_warp || static_cast<int>(threadIdx.x) % kWarpSize < threads_per_row;
  acc_t* dw_out = dw_partial != nullptr ? dw_partial + static_cast<int64_t>(blockIdx.x) * a.cols : nullptr;
  acc_t* db_out = db_partial != nullptr ? db_partial + static_cast<int64_t>(blockIdx.x) * a.cols : nullptr;
  for (int turn = 0; turn < turns; ++turn) {
    if (my_turn == turn && folds) {
      const bool last = turn == turns - 1;
#pragma unroll
      for (int k = 0; k < kNV; ++k) {
        const int64_t col = col_of(k);
        if (col < 0) continue;
#pragma unroll
        for (int i = 0; i < kV; ++i) {
          if (turn > 0) {
            dw[k][i] += combine[col + i];
            db[k][i] += combine[a.cols + col + i];
          }
          if (!last) {
            combine[col + i] = dw[k][i];
            combine[a.cols + col + i] = db[k][i];
          }
        }
        if (last) store_param_partials<acc_t, kV>(dw_out, db_out, col, dw[k], db[k]);
      }
    }
    __syncthreads();
  }
}

// Streaming backward, first kernel: per-row mean(g) and mean(g * x_hat), one block per row.
template <typename in_t, typename saved_t, int kV>
__global__ void __launch_bounds__(kRowStreamThreads)
    row_norm_bwd_row_sums(const RowNormBwdArgs<in_t, saved_t> a, at::opmath_type<in_t>* row_means) {
  using acc_t = at::opmath_type<in_t>;
  NORM_EXT_SHARED(SumPair<acc_t>, slots, [kBlockReduceSlots]);
  const int64_t nvec = a.cols / kV;
  const acc_t n = static_cast<acc_t>(a.cols);
  for (int64_t row = blockIdx.x; row < a.rows; row += gridDim.x) {
    const int64_t row_offset = row * a.cols;
    const acc_t rstd = a.rstd[row];
    const acc_t mean = a.mean != nullptr ? a.mean[row] : acc_t(0);
    SumPair<acc_t> sums{0, 0};
    for (int64_t j = threadIdx.x; j < nvec; j += blockDim.x) {
      acc_t xhat[kV];
      acc_t dy[kV];
      acc_t g[kV];
      load_bwd_vector<in_t, saved_t, kV>(a, row_offset + j * kV, j * kV, mean, rstd, xhat, dy, g);
#pragma unroll
      for (int i = 0; i < kV; ++i) {
        sums.first += g[i];
        sums.second += g[i] * xhat[i];
      }
    }
    sums = block_allreduce(sums, SumOp{}, SumPair<acc_t>{0, 0}, slots);
    if (threadIdx.x == 0) {
      row_means[2 * row] = a.rms ? acc_t(0) : sums.first / n;
      row_means[2 * row + 1] = sums.second / n;
    }
  }
}

// Streaming backward, second kernel: a 2-D grid of column tiles x row chunks. Each thread owns one
// vector of columns and walks the rows of its chunk, writing dx and accumulating that chunk's
// dgamma/dbeta partials in registers.
template <typename in_t, typename saved_t, int kV>
__global__ void __launch_bounds__(kRowStreamThreads)
    row_norm_bwd_stream(const RowNormBwdArgs<in_t, saved_t> a, const at::opmath_type<in_t>* row_means,
                        at::opmath_type<in_t>* dw_partial, at::opmath_type<in_t>* db_partial) {
  using acc_t = at::opmath_type<in_t>;
  const int64_t col = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * kV;
  if (col >= a.cols) return;
  const int64_t row_begin = a.rows * blockIdx.y / gridDim.y;
  const int64_t row_end = a.rows * (blockIdx.y + 1) / gridDim.y;
  acc_t dw[kV] = {};
  acc_t db[kV] = {};
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t offset = row * a.cols + col;
    const acc_t rstd = a.rstd[row];
    const acc_t mean = a.mean != nullptr ? a.mean[row] : acc_t(0);
    acc_t xhat[kV];
    acc_t dy[kV];
    acc_t g[kV];
    load_bwd_vector<in_t, saved_t, kV>(a, offset, col, mean, rstd, xhat, dy, g);
#pragma unroll
    for (int i = 0; i < kV; ++i) {
      dw[i] += dy[i] * xhat[i];
      db[i] += dy[i];
    }
    store_bwd_vector<in_t, saved_t, kV>(a, offset, rstd, row_means[2 * row], row_means[2 * row + 1], xhat, g);
  }
  store_param_partials<acc_t, kV>(dw_partial, db_partial, static_cast<int64_t>(blockIdx.y) * a.cols + col, dw, db);
}

// Cluster path of the backward (sm_90), for rows past the register path: as in the forward, each
// block of a cluster holds a contiguous column slice of the row in registers, and the row sums of
// g and g * x_hat are exchanged through distributed shared memory (double-buffered, one barrier per
// row). Cluster c owns rows [rows * c / G, rows * (c + 1) / G) of G clusters, so each block keeps
// its slice's dgamma/dbeta partials in registers and writes them once, as cluster c's partial row.
template <typename in_t, typename saved_t, int kV>
__global__ void __launch_bounds__(kRowBwdMaxThreads)
    row_norm_bwd_cluster(const RowNormBwdArgs<in_t, saved_t> a, at::opmath_type<in_t>* dw_partial,
                         at::opmath_type<in_t>* db_partial) {
#if NORM_EXT_CLUSTER_KERNELS
  using acc_t = at::opmath_type<in_t>;
  constexpr int kNV = kRowBwdMaxVecs;
  NORM_EXT_SHARED(SumPair<acc_t>, slots, [kBlockReduceSlots]);
  NORM_EXT_SHARED(SumPair<acc_t>, cluster_sums, [2]);
  const cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
  const int cluster_size = static_cast<int>(cluster.num_blocks());
  const int64_t cluster_id = blockIdx.x / cluster_size;
  const int64_t num_clusters = gridDim.x / cluster_size;
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const acc_t n = static_cast<acc_t>(a.cols);
  const std::pair<int64_t, int64_t> slice = cluster_slice(cluster, a.cols / kV);
  const auto col_of = [&](int k) {
    const int64_t j = slice.first + threadIdx.x + k * static_cast<int64_t>(blockDim.x);
    return j < slice.second ? j * kV : int64_t(-1);
  };

  acc_t dw[kNV][kV] = {};
  acc_t db[kNV][kV] = {};
  const int64_t row_begin = a.rows * cluster_id / num_clusters;
  const int64_t row_end = a.rows * (cluster_id + 1) / num_clusters;
  int parity = 0;
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t row_offset = row * a.cols;
    const acc_t rstd = a.rstd[row];
    const acc_t mean = a.mean != nullptr ? a.mean[row] : acc_t(0);
    acc_t xhat[kNV][kV];
    acc_t g[kNV][kV];
    const SumPair<acc_t> sums =
        block_allreduce(accumulate_bwd_row<in_t, saved_t, kNV, kV>(a, row_offset, mean, rstd, col_of, xhat, g, dw, db),
                        SumOp{}, SumPair<acc_t>{0, 0}, slots);
    if (threadIdx.x == 0) cluster_sums[parity] = sums;
    cluster.sync();
    SumPair<acc_t> total{0, 0};
    if (lane < cluster_size) total = *cluster.map_shared_rank(&cluster_sums[parity], lane);
    total = warp_allreduce(total, SumOp{});
    parity ^= 1;
    const acc_t mean_g = a.rms ? acc_t(0) : total.first / n;
    const acc_t mean_gx = total.second / n;
    store_bwd_row<in_t, saved_t, kNV, kV>(a, row_offset, rstd, mean_g, mean_gx, col_of, xhat, g);
  }

  const int64_t partial_offset = cluster_id * a.cols;
#pragma unroll
  for (int k = 0; k < kNV; ++k) {
    const int64_t col = col_of(k);
    if (col >= 0) store_param_partials<acc_t, kV>(dw_partial, db_partial, partial_offset + col, dw[k], db[k]);
  }
  cluster.sync();
#else
  __trap();
#endif
}

// out[c] = sum over p of partial[p][c], in a fixed order: kRowReduceSplits strided sums per column,
// then combined in split order. Casts to the parameter's dtype. Blocks stride over column tiles.
template <typename acc_t, typename out_t>
__global__ void reduce_param_grad_partials(const acc_t* partial, int64_t num_partials, int64_t cols, out_t* out) {
  NORM_EXT_SHARED(acc_t, sums, [kRowReduceSplits][kRowReduceCols]);
  for (int64_t tile = static_cast<int64_t>(blockIdx.x) * kRowReduceCols; tile < cols;
       tile += static_cast<int64_t>(gridDim.x) * kRowReduceCols) {
    const int64_t col = tile + threadIdx.x;
    acc_t s = 0;
    if (col < cols) {
      for (int64_t p = threadIdx.y; p < num_partials; p += kRowReduceSplits) s += partial[p * cols + col];
    }
    sums[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && col < cols) {
      acc_t total = 0;
#pragma unroll
      for (int y = 0; y < kRowReduceSplits; ++y) total += sums[y][threadIdx.x];
      out[col] = static_cast<out_t>(total);
    }
    // The next tile rewrites `sums`.
    __syncthreads();
  }
}

}  // namespace NORM_EXT_GPU_NAMESPACE
}  // namespace norm_ext
