// CUDA kernels of the row-norm family: LayerNorm and RMSNorm, plain and with a fused residual add.
//
// Paths, chosen by the row length in 128-bit vectors (nvec = cols / kV, kV = 16 / sizeof(input);
// kV = 1 when any pointer or the row length is not vector aligned):
//   - register, warp mode: one warp per row, several rows per block, for short rows;
//   - register, block mode: one block per row, the row held in registers (up to kFwdMaxVecsPerThread
//     vectors per thread, i.e. 32K bf16 / 16K fp32 elements forward; 8K bf16 / 4K fp32 backward,
//     where the dgamma/dbeta partials also live in registers);
//   - cluster (sm_90): longer rows split over a cluster of 2-16 blocks, each holding its slice in
//     registers and exchanging its partial statistics (Welford states forward, the two row sums
//     backward) through distributed shared memory, so the row is still read once; with 16-block
//     clusters, up to 512K bf16 / 256K fp32 elements forward and 128K / 64K backward;
//   - streaming: rows too long for the register file are re-read from global memory (from L2 while
//     the rows in flight fit there); any length works. The forward is one block per row, two passes;
//     the backward is a row-sums kernel, then a column-tile x row-chunk kernel for dx and the
//     dgamma/dbeta partials (x and dy are read twice).
// Both register modes are one kernel: a "row group" is a warp or the whole block, and the reduction
// picks warp shuffles or the block reduction with a launch-uniform branch, which keeps the number of
// instantiations (and the build time) down.
//
// The backward writes one dgamma/dbeta partial row per block (each block owns a contiguous range of
// rows), and a second kernel sums the partials over blocks in a fixed order: the result is
// deterministic and no atomics are needed.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cooperative_groups.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <mutex>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/checks.h"
#include "common/reduce.cuh"
#include "common/row_norm_ops.h"
#include "common/vec.h"
#include "common/welford.h"

namespace norm_ext {
namespace {

// Warp mode runs several rows per block; the backward uses more rows per block so that fewer
// dgamma/dbeta partial rows are written.
constexpr int kWarpModeFwdThreads = 128;
constexpr int kWarpModeBwdThreads = 256;
// Vectors per thread in the register path (warp mode uses up to kWarpModeMaxVecsPerThread). At most
// 512 threads per block leave 128 registers per thread, enough for 64 fp32 row elements forward.
// The backward keeps x_hat, g and the two parameter-grad partials per element, hence fewer.
constexpr int kWarpModeMaxVecsPerThread = 4;
constexpr int kFwdMaxVecsPerThread = 8;
constexpr int kFwdMaxThreads = 512;
constexpr int kBwdMaxVecsPerThread = 2;
constexpr int kBwdMaxThreads = 512;
constexpr int kStreamThreads = 512;
// A backward block handles at least this many rows per row group once every SM has a block, which
// bounds the partial-sum traffic (grid x cols) relative to the input.
constexpr int64_t kMinRowsPerGroup = 8;
constexpr int kReduceCols = 32;
constexpr int kReduceSplits = 8;
constexpr int64_t kMaxGridX = std::numeric_limits<int>::max();
constexpr int64_t kMaxGridY = 65535;

__host__ __device__ constexpr int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

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

template <typename in_t, int kV>
bool params_aligned(const AffineParams& p) {
  const auto ok = [&](const void* ptr) {
    return p.is_float ? is_aligned<kV * sizeof(float)>(ptr) : is_aligned<kV * sizeof(in_t)>(ptr);
  };
  return ok(p.weight) && ok(p.bias);
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
// warp's loads are contiguous. The variance is a second pass over the registers, never
// E[h^2] - E[h]^2, which cancels for rows with a large mean.
template <typename in_t, typename h_t, int kNV, int kV>
__global__ void __launch_bounds__(kFwdMaxThreads)
    row_norm_fwd_reg(const RowNormFwdArgs<in_t, h_t> a, const int threads_per_row) {
  using acc_t = at::opmath_type<in_t>;
  __shared__ acc_t slots[kBlockReduceSlots];
  const bool warp_mode = threads_per_row == kWarpSize;
  const int rows_per_block = static_cast<int>(blockDim.x) / threads_per_row;
  const int lane = static_cast<int>(threadIdx.x) % threads_per_row;
  const acc_t n = static_cast<acc_t>(a.cols);
  const auto row_sum = [&](acc_t v) { return warp_mode ? warp_allreduce(v, SumOp{}) : block_allreduce_sum(v, slots); };

  const int64_t row_step = static_cast<int64_t>(gridDim.x) * rows_per_block;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * rows_per_block + threadIdx.x / threads_per_row; row < a.rows;
       row += row_step) {
    const int64_t row_offset = row * a.cols;
    const acc_t shift = row_shift(a, row_offset);
    acc_t h[kNV][kV];
    acc_t sum = 0;
#pragma unroll
    for (int k = 0; k < kNV; ++k) {
      const int64_t col = static_cast<int64_t>(lane + k * threads_per_row) * kV;
      if (col < a.cols) {
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
      if (col < a.cols) {
#pragma unroll
        for (int i = 0; i < kV; ++i) sq += (h[k][i] - mean) * (h[k][i] - mean);
      }
    }
    const acc_t rstd = rsqrt_acc(row_sum(sq) / n + a.eps);
    if (lane == 0) {
      if (a.mean != nullptr) a.mean[row] = shift + mean;
      a.rstd[row] = rstd;
    }
#pragma unroll
    for (int k = 0; k < kNV; ++k) {
      const int64_t col = static_cast<int64_t>(lane + k * threads_per_row) * kV;
      if (col < a.cols) store_fwd_vector<in_t, h_t, kV>(a, row_offset + col, col, h[k], mean, rstd);
    }
  }
}

// Streaming path, one block per row. The first pass merges per-vector (count, mean, m2) into a
// per-thread Welford state (one division per vector, not per element); the second pass re-reads h
// (from residual_out for the fused ops: each thread re-reads exactly the elements it wrote).
template <typename in_t, typename h_t, int kV>
__global__ void __launch_bounds__(kStreamThreads) row_norm_fwd_stream(const RowNormFwdArgs<in_t, h_t> a) {
  using acc_t = at::opmath_type<in_t>;
  __shared__ WelfordState<acc_t> welford_slots[kBlockReduceSlots];
  __shared__ acc_t sum_slots[kBlockReduceSlots];
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

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
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
// cluster of 2-16 blocks, each holding a contiguous slice of the row in registers, so the row is
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
__global__ void __launch_bounds__(kFwdMaxThreads) row_norm_fwd_cluster(const RowNormFwdArgs<in_t, h_t> a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  using acc_t = at::opmath_type<in_t>;
  constexpr int kNV = kFwdMaxVecsPerThread;
  __shared__ acc_t slots[kBlockReduceSlots];
  __shared__ WelfordState<acc_t> cluster_states[2];
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

// Cluster shapes for rows past the register path, tried in order: the first whose slice fits the
// block's registers and which the device can schedule. 256-thread blocks first, as in the register
// path (two blocks per SM overlap one's reductions with the other's loads); 16 blocks is beyond the
// portable cluster size and depends on the GPU's partitioning, hence last.
struct ClusterShape {
  int blocks;
  int max_threads;
};
constexpr ClusterShape kClusterShapes[] = {{2, 256}, {4, 256}, {8, 256}, {8, 512}, {16, 512}};
constexpr int kMaxPortableClusterSize = 8;

cudaLaunchAttribute cluster_dim_attribute(int blocks) {
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeClusterDimension;
  attr.val.clusterDim.x = blocks;
  attr.val.clusterDim.y = 1;
  attr.val.clusterDim.z = 1;
  return attr;
}

// Clusters of this shape that fit on the device at once (0: it cannot launch), cached per device,
// kernel and shape, so that a launch makes no driver query.
int max_active_clusters(const void* kernel, int blocks, int threads) {
  static std::mutex mutex;
  static std::map<std::tuple<int, const void*, int, int>, int> cache;
  const int device = at::cuda::current_device();
  const std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_tuple(device, kernel, blocks, threads);
  const auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  cudaLaunchAttribute attr = cluster_dim_attribute(blocks);
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(blocks);
  config.blockDim = dim3(threads);
  config.attrs = &attr;
  config.numAttrs = 1;
  int clusters = 0;
  // The kernel's code for this device may lack the cluster path: the build may target sm_80 only,
  // and a GPU running JIT-compiled sm_80 PTX reports major 9 but has no such code.
  cudaFuncAttributes attrs{};
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attrs, kernel));
  // A device that refuses non-portable sizes, or a shape it cannot schedule, answers with an error
  // rather than a zero; either way the shape is skipped.
  const bool allowed = attrs.ptxVersion >= 90 &&
                       (blocks <= kMaxPortableClusterSize ||
                        cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) == cudaSuccess);
  if (!allowed || cudaOccupancyMaxActiveClusters(&clusters, kernel, &config) != cudaSuccess) {
    (void)cudaGetLastError();
    clusters = 0;
  }
  cache.emplace(key, clusters);
  return clusters;
}

struct ClusterLaunch {
  int blocks = 0;  // 0: no cluster launch fits
  int threads = 0;
  int max_clusters = 0;
};

// Picks the cluster shape for a row of nvec vectors, vecs_per_thread of them per thread; none on
// GPUs before sm_90 or where no shape fits (see max_active_clusters).
ClusterLaunch pick_cluster_launch(const void* kernel, int64_t nvec, int vecs_per_thread) {
  if (at::cuda::getCurrentDeviceProperties()->major < 9) return {};
  for (const ClusterShape& shape : kClusterShapes) {
    const int64_t slice = ceil_div(nvec, shape.blocks);
    if (slice > static_cast<int64_t>(shape.max_threads) * vecs_per_thread) continue;
    const int threads = static_cast<int>(ceil_div(ceil_div(slice, vecs_per_thread), kWarpSize) * kWarpSize);
    const int clusters = max_active_clusters(kernel, shape.blocks, threads);
    if (clusters > 0) return {shape.blocks, threads, clusters};
  }
  return {};
}

template <typename... Params, typename... Args>
void launch_clusters(void (*kernel)(Params...), const ClusterLaunch& shape, int64_t num_clusters, cudaStream_t stream,
                     Args&&... args) {
  cudaLaunchAttribute attr = cluster_dim_attribute(shape.blocks);
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(static_cast<unsigned>(shape.blocks * num_clusters));
  config.blockDim = dim3(shape.threads);
  config.stream = stream;
  config.attrs = &attr;
  config.numAttrs = 1;
  C10_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
}

template <typename in_t, typename h_t, int kV>
void launch_row_norm_fwd_vec(const RowNormFwdArgs<in_t, h_t>& a, cudaStream_t stream) {
  const int64_t nvec = a.cols / kV;
  if (nvec <= kWarpSize * kWarpModeMaxVecsPerThread) {
    const int64_t grid = std::min(ceil_div(a.rows, kWarpModeFwdThreads / kWarpSize), kMaxGridX);
    if (nvec <= kWarpSize) {
      row_norm_fwd_reg<in_t, h_t, 1, kV><<<grid, kWarpModeFwdThreads, 0, stream>>>(a, kWarpSize);
    } else if (nvec <= 2 * kWarpSize) {
      row_norm_fwd_reg<in_t, h_t, 2, kV><<<grid, kWarpModeFwdThreads, 0, stream>>>(a, kWarpSize);
    } else {
      row_norm_fwd_reg<in_t, h_t, kWarpModeMaxVecsPerThread, kV>
          <<<grid, kWarpModeFwdThreads, 0, stream>>>(a, kWarpSize);
    }
  } else if (nvec <= kFwdMaxThreads * kFwdMaxVecsPerThread) {
    // The register file bounds the resident row data per SM either way; eight vectors per thread
    // from 256 threads on keeps at least two blocks per SM (the kNV=4 variant needs ~114 registers,
    // kNV=8 ~128), so one block's loads overlap another's reductions and stores.
    const int vecs_per_thread =
        nvec <= 256 * kWarpModeMaxVecsPerThread ? kWarpModeMaxVecsPerThread : kFwdMaxVecsPerThread;
    const int threads = static_cast<int>(ceil_div(ceil_div(nvec, vecs_per_thread), kWarpSize) * kWarpSize);
    const int64_t grid = std::min(a.rows, kMaxGridX);
    if (vecs_per_thread == kWarpModeMaxVecsPerThread) {
      row_norm_fwd_reg<in_t, h_t, kWarpModeMaxVecsPerThread, kV><<<grid, threads, 0, stream>>>(a, threads);
    } else {
      row_norm_fwd_reg<in_t, h_t, kFwdMaxVecsPerThread, kV><<<grid, threads, 0, stream>>>(a, threads);
    }
  } else {
    // Misaligned rows (kV = 1) would need clusters far past 16 blocks at these lengths.
    if constexpr (kV > 1) {
      const auto kernel = row_norm_fwd_cluster<in_t, h_t, kV>;
      const ClusterLaunch shape =
          pick_cluster_launch(reinterpret_cast<const void*>(kernel), nvec, kFwdMaxVecsPerThread);
      if (shape.blocks > 0) {
        launch_clusters(kernel, shape, std::min<int64_t>(a.rows, shape.max_clusters), stream, a);
        return;
      }
    }
    row_norm_fwd_stream<in_t, h_t, kV><<<std::min(a.rows, kMaxGridX), kStreamThreads, 0, stream>>>(a);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename in_t, typename h_t>
void launch_row_norm_fwd(const RowNormFwdArgs<in_t, h_t>& a, cudaStream_t stream) {
  constexpr int kV = vec_width_128<in_t>();
  const bool vectorized = a.cols % kV == 0 && is_aligned<kV * sizeof(in_t)>(a.x) &&
                          is_aligned<kV * sizeof(in_t)>(a.y) && is_aligned<kV * sizeof(h_t)>(a.residual) &&
                          is_aligned<kV * sizeof(h_t)>(a.residual_out) && params_aligned<in_t, kV>(a.affine);
  if (vectorized) {
    launch_row_norm_fwd_vec<in_t, h_t, kV>(a, stream);
  } else {
    launch_row_norm_fwd_vec<in_t, h_t, 1>(a, stream);
  }
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
// groups walk them, keeping x_hat and g of the current row and their dgamma/dbeta partials in
// registers. At the end the groups fold their partials through shared memory in group order, and
// the last group writes the block's partial row, so the result does not depend on scheduling.
template <typename in_t, typename saved_t, int kNV, int kV>
__global__ void __launch_bounds__(kBwdMaxThreads)
    row_norm_bwd_reg(const RowNormBwdArgs<in_t, saved_t> a, const int threads_per_row,
                     at::opmath_type<in_t>* dw_partial, at::opmath_type<in_t>* db_partial) {
  using acc_t = at::opmath_type<in_t>;
  __shared__ SumPair<acc_t> slots[kBlockReduceSlots];
  extern __shared__ __align__(16) unsigned char combine_raw[];
  acc_t* combine = reinterpret_cast<acc_t*>(combine_raw);  // [2][cols], used when rows_per_block > 1
  const bool warp_mode = threads_per_row == kWarpSize;
  const int rows_per_block = static_cast<int>(blockDim.x) / threads_per_row;
  const int group = static_cast<int>(threadIdx.x) / threads_per_row;
  const int lane = static_cast<int>(threadIdx.x) % threads_per_row;
  const acc_t n = static_cast<acc_t>(a.cols);
  const auto row_sums = [&](SumPair<acc_t> v) {
    return warp_mode ? warp_allreduce(v, SumOp{}) : block_allreduce(v, SumOp{}, SumPair<acc_t>{0, 0}, slots);
  };

  const auto col_of = [&](int k) {
    const int64_t col = static_cast<int64_t>(lane + k * threads_per_row) * kV;
    return col < a.cols ? col : int64_t(-1);
  };

  acc_t dw[kNV][kV] = {};
  acc_t db[kNV][kV] = {};
  const int64_t row_begin = a.rows * blockIdx.x / gridDim.x;
  const int64_t row_end = a.rows * (blockIdx.x + 1) / gridDim.x;
  for (int64_t row = row_begin + group; row < row_end; row += rows_per_block) {
    const int64_t row_offset = row * a.cols;
    const acc_t rstd = a.rstd[row];
    const acc_t mean = a.mean != nullptr ? a.mean[row] : acc_t(0);
    acc_t xhat[kNV][kV];
    acc_t g[kNV][kV];
    const SumPair<acc_t> sums =
        row_sums(accumulate_bwd_row<in_t, saved_t, kNV, kV>(a, row_offset, mean, rstd, col_of, xhat, g, dw, db));
    const acc_t mean_g = a.rms ? acc_t(0) : sums.first / n;
    const acc_t mean_gx = sums.second / n;
    store_bwd_row<in_t, saved_t, kNV, kV>(a, row_offset, rstd, mean_g, mean_gx, col_of, xhat, g);
  }

  acc_t* dw_out = dw_partial != nullptr ? dw_partial + static_cast<int64_t>(blockIdx.x) * a.cols : nullptr;
  acc_t* db_out = db_partial != nullptr ? db_partial + static_cast<int64_t>(blockIdx.x) * a.cols : nullptr;
  for (int turn = 0; turn < rows_per_block; ++turn) {
    if (group == turn) {
      const bool last = turn == rows_per_block - 1;
#pragma unroll
      for (int k = 0; k < kNV; ++k) {
        const int64_t col = col_of(k);
        if (col < 0) continue;
#pragma unroll
        for (int i = 0; i < kV; ++i) {
          acc_t dw_sum = dw[k][i];
          acc_t db_sum = db[k][i];
          if (turn > 0) {
            dw_sum += combine[col + i];
            db_sum += combine[a.cols + col + i];
          }
          if (!last) {
            combine[col + i] = dw_sum;
            combine[a.cols + col + i] = db_sum;
          } else {
            if (dw_out != nullptr) dw_out[col + i] = dw_sum;
            if (db_out != nullptr) db_out[col + i] = db_sum;
          }
        }
      }
    }
    __syncthreads();
  }
}

// Streaming backward, first kernel: per-row mean(g) and mean(g * x_hat), one block per row.
template <typename in_t, typename saved_t, int kV>
__global__ void __launch_bounds__(kStreamThreads)
    row_norm_bwd_row_sums(const RowNormBwdArgs<in_t, saved_t> a, at::opmath_type<in_t>* row_means) {
  using acc_t = at::opmath_type<in_t>;
  __shared__ SumPair<acc_t> slots[kBlockReduceSlots];
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
__global__ void __launch_bounds__(kStreamThreads)
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
  const int64_t partial_offset = static_cast<int64_t>(blockIdx.y) * a.cols + col;
#pragma unroll
  for (int i = 0; i < kV; ++i) {
    if (dw_partial != nullptr) dw_partial[partial_offset + i] = dw[i];
    if (db_partial != nullptr) db_partial[partial_offset + i] = db[i];
  }
}

// Cluster path of the backward (sm_90), for rows past the register path: as in the forward, each
// block of a cluster holds a contiguous column slice of the row in registers, and the row sums of
// g and g * x_hat are exchanged through distributed shared memory (double-buffered, one barrier per
// row). Cluster c owns rows [rows * c / G, rows * (c + 1) / G) of G clusters, so each block keeps
// its slice's dgamma/dbeta partials in registers and writes them once, as cluster c's partial row.
template <typename in_t, typename saved_t, int kV>
__global__ void __launch_bounds__(kBwdMaxThreads)
    row_norm_bwd_cluster(const RowNormBwdArgs<in_t, saved_t> a, at::opmath_type<in_t>* dw_partial,
                         at::opmath_type<in_t>* db_partial) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  using acc_t = at::opmath_type<in_t>;
  constexpr int kNV = kBwdMaxVecsPerThread;
  __shared__ SumPair<acc_t> slots[kBlockReduceSlots];
  __shared__ SumPair<acc_t> cluster_sums[2];
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
    if (col < 0) continue;
#pragma unroll
    for (int i = 0; i < kV; ++i) {
      if (dw_partial != nullptr) dw_partial[partial_offset + col + i] = dw[k][i];
      if (db_partial != nullptr) db_partial[partial_offset + col + i] = db[k][i];
    }
  }
  cluster.sync();
#else
  __trap();
#endif
}

// out[c] = sum over p of partial[p][c], in a fixed order: kReduceSplits strided sums per column,
// then combined in split order. Casts to the parameter's dtype.
template <typename acc_t, typename out_t>
__global__ void reduce_param_grad_partials(const acc_t* partial, int64_t num_partials, int64_t cols, out_t* out) {
  __shared__ acc_t sums[kReduceSplits][kReduceCols];
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kReduceCols + threadIdx.x;
  acc_t s = 0;
  if (col < cols) {
    for (int64_t p = threadIdx.y; p < num_partials; p += kReduceSplits) s += partial[p * cols + col];
  }
  sums[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && col < cols) {
    acc_t total = 0;
#pragma unroll
    for (int y = 0; y < kReduceSplits; ++y) total += sums[y][threadIdx.x];
    out[col] = static_cast<out_t>(total);
  }
}

template <typename acc_t>
void reduce_partials_into(const at::Tensor& partial, at::Tensor& out, cudaStream_t stream) {
  if (!partial.defined()) return;
  const int64_t num_partials = partial.size(0);
  const int64_t cols = partial.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "norm_ext_reduce_partials", [&] {
    reduce_param_grad_partials<acc_t, scalar_t>
        <<<std::min(ceil_div(cols, kReduceCols), kMaxGridX), dim3(kReduceCols, kReduceSplits), 0, stream>>>(
            partial.const_data_ptr<acc_t>(), num_partials, cols, out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// One partial row per block (or cluster, or row chunk) of dgamma or dbeta, when that grad is wanted.
at::Tensor make_param_grad_partial(const at::Tensor& grad, int64_t num_partials, int64_t cols,
                                   const at::TensorOptions& acc_opts) {
  return grad.defined() ? at::empty({num_partials, cols}, acc_opts) : at::Tensor();
}

template <typename acc_t>
acc_t* data_or_null(at::Tensor& t) {
  return t.defined() ? t.mutable_data_ptr<acc_t>() : nullptr;
}

// Returns false when no cluster shape fits the row or the device; the caller then streams.
template <typename in_t, typename saved_t, int kV>
bool launch_row_norm_bwd_cluster(const RowNormBwdArgs<in_t, saved_t>& a, const at::Tensor& grad_weight,
                                 const at::Tensor& grad_bias, const at::TensorOptions& acc_opts, cudaStream_t stream,
                                 at::Tensor& dw_partial, at::Tensor& db_partial) {
  using acc_t = at::opmath_type<in_t>;
  const auto kernel = row_norm_bwd_cluster<in_t, saved_t, kV>;
  const ClusterLaunch shape =
      pick_cluster_launch(reinterpret_cast<const void*>(kernel), a.cols / kV, kBwdMaxVecsPerThread);
  if (shape.blocks == 0) return false;
  const int64_t clusters = std::min<int64_t>(a.rows, shape.max_clusters);
  dw_partial = make_param_grad_partial(grad_weight, clusters, a.cols, acc_opts);
  db_partial = make_param_grad_partial(grad_bias, clusters, a.cols, acc_opts);
  launch_clusters(kernel, shape, clusters, stream, a, data_or_null<acc_t>(dw_partial), data_or_null<acc_t>(db_partial));
  return true;
}

template <typename in_t, typename saved_t, int kV>
void launch_row_norm_bwd_vec(const RowNormBwdArgs<in_t, saved_t>& a, at::Tensor& grad_weight, at::Tensor& grad_bias,
                             const at::TensorOptions& acc_opts, cudaStream_t stream) {
  using acc_t = at::opmath_type<in_t>;
  const int64_t nvec = a.cols / kV;
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  at::Tensor dw_partial;
  at::Tensor db_partial;

  if (nvec <= kBwdMaxThreads * kBwdMaxVecsPerThread) {
    const bool warp_mode = nvec <= kWarpSize * kBwdMaxVecsPerThread;
    const int threads = warp_mode
                            ? kWarpModeBwdThreads
                            : static_cast<int>(ceil_div(ceil_div(nvec, kBwdMaxVecsPerThread), kWarpSize) * kWarpSize);
    const int threads_per_row = warp_mode ? kWarpSize : threads;
    const int rows_per_block = threads / threads_per_row;
    const auto kernel = warp_mode && nvec <= kWarpSize ? row_norm_bwd_reg<in_t, saved_t, 1, kV>
                                                       : row_norm_bwd_reg<in_t, saved_t, kBwdMaxVecsPerThread, kV>;
    const size_t smem = rows_per_block > 1 ? 2 * a.cols * sizeof(acc_t) : 0;
    int blocks_per_sm = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, kernel, threads, smem));
    const int64_t row_groups = ceil_div(a.rows, rows_per_block);
    const int64_t grid =
        std::min({sms * std::max(blocks_per_sm, 1), std::max(sms, ceil_div(row_groups, kMinRowsPerGroup)), row_groups});
    dw_partial = make_param_grad_partial(grad_weight, grid, a.cols, acc_opts);
    db_partial = make_param_grad_partial(grad_bias, grid, a.cols, acc_opts);
    kernel<<<grid, threads, smem, stream>>>(a, threads_per_row, data_or_null<acc_t>(dw_partial),
                                            data_or_null<acc_t>(db_partial));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    // Misaligned rows (kV = 1) would need clusters far past 16 blocks at these lengths.
    bool clustered = false;
    if constexpr (kV > 1) {
      clustered = launch_row_norm_bwd_cluster<in_t, saved_t, kV>(a, grad_weight, grad_bias, acc_opts, stream,
                                                                 dw_partial, db_partial);
    }
    if (!clustered) {
      at::Tensor row_means = at::empty({a.rows, 2}, acc_opts);
      row_norm_bwd_row_sums<in_t, saved_t, kV>
          <<<std::min(a.rows, kMaxGridX), kStreamThreads, 0, stream>>>(a, row_means.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      // About two waves of 512-thread blocks over the column tiles and row chunks.
      const int64_t col_tiles = ceil_div(nvec, kStreamThreads);
      const int64_t row_chunks = std::clamp<int64_t>(ceil_div(sms * 8, col_tiles), 1, std::min(a.rows, kMaxGridY));
      dw_partial = make_param_grad_partial(grad_weight, row_chunks, a.cols, acc_opts);
      db_partial = make_param_grad_partial(grad_bias, row_chunks, a.cols, acc_opts);
      row_norm_bwd_stream<in_t, saved_t, kV><<<dim3(col_tiles, row_chunks), kStreamThreads, 0, stream>>>(
          a, row_means.const_data_ptr<acc_t>(), data_or_null<acc_t>(dw_partial), data_or_null<acc_t>(db_partial));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }
  reduce_partials_into<acc_t>(dw_partial, grad_weight, stream);
  reduce_partials_into<acc_t>(db_partial, grad_bias, stream);
}

template <typename in_t, typename saved_t>
void launch_row_norm_bwd(const RowNormBwdArgs<in_t, saved_t>& a, at::Tensor& grad_weight, at::Tensor& grad_bias,
                         const at::TensorOptions& acc_opts, cudaStream_t stream) {
  constexpr int kV = vec_width_128<in_t>();
  const bool vectorized = a.cols % kV == 0 && is_aligned<kV * sizeof(in_t)>(a.dy) &&
                          is_aligned<kV * sizeof(saved_t)>(a.saved) && is_aligned<kV * sizeof(saved_t)>(a.dx) &&
                          is_aligned<kV * sizeof(saved_t)>(a.grad_residual) && params_aligned<in_t, kV>(a.affine);
  if (vectorized) {
    launch_row_norm_bwd_vec<in_t, saved_t, kV>(a, grad_weight, grad_bias, acc_opts, stream);
  } else {
    launch_row_norm_bwd_vec<in_t, saved_t, 1>(a, grad_weight, grad_bias, acc_opts, stream);
  }
}

// ----------------------------------------------------------------------------------------------
// Op wrappers

bool defined(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined();
}

template <typename in_t>
constexpr bool is_reduced_float() {
  return std::is_same_v<in_t, at::Half> || std::is_same_v<in_t, at::BFloat16>;
}

// Calls run(T{}) with T the dtype of the residual stream / saved tensor: the input's dtype, or
// float32 for half / bf16 input. A template, so that the discarded branch is not instantiated.
template <typename in_t, typename Run>
void with_stream_dtype(at::ScalarType dtype, const Run& run) {
  if constexpr (is_reduced_float<in_t>()) {
    if (dtype == at::kFloat) return run(float{});
  }
  run(in_t{});
}

// weight and bias share a dtype (checked), so either one tells whether they are float32.
AffineParams make_affine(const at::Tensor& w, const at::Tensor& b, at::ScalarType input_dtype, bool zero_centered) {
  const at::Tensor& any = w.defined() ? w : b;
  const bool is_float = any.defined() && any.scalar_type() == at::kFloat && input_dtype != at::kFloat;
  return {w.defined() ? w.const_data_ptr() : nullptr, b.defined() ? b.const_data_ptr() : nullptr, is_float,
          zero_centered};
}

// Shared body of the four forward ops. residual is null for the plain ops.
std::vector<at::Tensor> row_norm_forward(const char* op, const at::Tensor& input_, const at::Tensor* residual_,
                                         std::optional<at::ScalarType> residual_dtype, at::IntArrayRef normalized_shape,
                                         const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                                         double eps, bool zero_centered, bool rms) {
  const RowShape shape = check_row_norm_inputs(op, input_, normalized_shape, weight, bias, eps);
  TORCH_CHECK(input_.is_cuda(), op, ": expected a CUDA input, got ", input_.device());
  at::ScalarType h_dtype = input_.scalar_type();
  if (residual_ != nullptr) h_dtype = check_add_norm_inputs(op, input_, *residual_, residual_dtype);
  if (residual_ != nullptr && add_norm_needs_unfused_sum(*residual_, h_dtype)) {
    const at::Tensor h = residual_stream_unfused(input_, *residual_, h_dtype);
    auto result =
        row_norm_forward(op, h, nullptr, std::nullopt, normalized_shape, weight, bias, eps, zero_centered, rms);
    result.insert(result.begin() + 1, h);
    return result;
  }

  const c10::cuda::CUDAGuard guard(input_.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const at::Tensor input = input_.contiguous();
  const auto stat_shape = row_stat_shape(input, static_cast<int64_t>(normalized_shape.size()));
  const auto stat_opts = input.options().dtype(stat_dtype(input.scalar_type()));
  at::Tensor out = at::empty(input.sizes(), input.options());
  at::Tensor mean = rms ? at::Tensor() : at::empty(stat_shape, stat_opts);
  at::Tensor rstd = at::empty(stat_shape, stat_opts);
  at::Tensor residual;
  at::Tensor residual_out;
  if (residual_ != nullptr) {
    // A residual in another dtype than h is rounded to h's dtype first, as in the CPU kernel; this
    // keeps the kernels to a single residual-stream dtype.
    residual = residual_->to(h_dtype).contiguous();
    residual_out = at::empty(input.sizes(), input.options().dtype(h_dtype));
  }
  const at::Tensor w = defined(weight) ? weight->contiguous() : at::Tensor();
  const at::Tensor b = defined(bias) ? bias->contiguous() : at::Tensor();

  if (shape.rows * shape.cols != 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "norm_ext_row_norm_forward", [&] {
      using in_t = scalar_t;
      using acc_t = at::opmath_type<in_t>;
      const auto run = [&](auto h_tag) {
        using h_t = decltype(h_tag);
        const RowNormFwdArgs<in_t, h_t> args{input.const_data_ptr<in_t>(),
                                             residual.defined() ? residual.const_data_ptr<h_t>() : nullptr,
                                             residual_out.defined() ? residual_out.mutable_data_ptr<h_t>() : nullptr,
                                             out.mutable_data_ptr<in_t>(),
                                             rms ? nullptr : mean.mutable_data_ptr<acc_t>(),
                                             rstd.mutable_data_ptr<acc_t>(),
                                             make_affine(w, b, input.scalar_type(), zero_centered),
                                             shape.rows,
                                             shape.cols,
                                             static_cast<acc_t>(eps),
                                             rms};
        launch_row_norm_fwd<in_t, h_t>(args, stream);
      };
      with_stream_dtype<in_t>(h_dtype, run);
    });
  } else if (shape.rows > 0) {
    // An empty row: mean 0, variance 0.
    if (mean.defined()) mean.zero_();
    rstd.fill_(1.0 / std::sqrt(eps));
  }

  std::vector<at::Tensor> result{out};
  if (residual_ != nullptr) result.push_back(residual_out);
  if (!rms) result.push_back(mean);
  result.push_back(rstd);
  return result;
}

std::vector<at::Tensor> row_norm_backward(const char* op, const at::Tensor& grad_out_, const at::Tensor& saved_,
                                          at::IntArrayRef normalized_shape, const at::Tensor* mean_,
                                          const at::Tensor& rstd_, const std::optional<at::Tensor>& weight,
                                          const std::optional<at::Tensor>& bias, bool zero_centered,
                                          bool saved_is_output, const std::optional<at::Tensor>& grad_residual_,
                                          bool rms) {
  const RowShape shape =
      check_row_norm_backward_inputs(op, grad_out_, saved_, normalized_shape,
                                     (rms || saved_is_output) ? nullptr : mean_, rstd_, weight, bias, grad_residual_);
  TORCH_CHECK(grad_out_.is_cuda(), op, ": expected CUDA tensors, got ", grad_out_.device());
  const at::ScalarType acc = stat_dtype(grad_out_.scalar_type());
  const bool use_mean = !rms && !saved_is_output;

  const c10::cuda::CUDAGuard guard(grad_out_.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const at::Tensor grad_out = grad_out_.contiguous();
  const at::Tensor saved = saved_.contiguous();
  const at::Tensor rstd = rstd_.contiguous();
  const at::Tensor mean = use_mean ? mean_->contiguous() : at::Tensor();
  const at::Tensor grad_residual = defined(grad_residual_) ? grad_residual_->contiguous() : at::Tensor();
  const at::Tensor w = defined(weight) ? weight->contiguous() : at::Tensor();
  const at::Tensor b = defined(bias) ? bias->contiguous() : at::Tensor();

  at::Tensor grad_input = at::empty(saved.sizes(), saved.options());
  const bool empty = shape.rows * shape.cols == 0;
  const auto make_grad = [&](const at::Tensor& p) {
    if (!p.defined()) return at::Tensor();
    return empty ? at::zeros(normalized_shape, p.options()) : at::empty(normalized_shape, p.options());
  };
  at::Tensor grad_weight = make_grad(w);
  at::Tensor grad_bias = make_grad(b);

  if (!empty) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, grad_out.scalar_type(), "norm_ext_row_norm_backward", [&] {
          using in_t = scalar_t;
          using acc_t = at::opmath_type<in_t>;
          const auto run = [&](auto saved_tag) {
            using saved_t = decltype(saved_tag);
            const AffineParams affine = make_affine(w, b, grad_out.scalar_type(), zero_centered);
            const RowNormBwdArgs<in_t, saved_t> args{
                grad_out.const_data_ptr<in_t>(),
                saved.const_data_ptr<saved_t>(),
                grad_residual.defined() ? grad_residual.const_data_ptr<saved_t>() : nullptr,
                grad_input.mutable_data_ptr<saved_t>(),
                use_mean ? mean.const_data_ptr<acc_t>() : nullptr,
                rstd.const_data_ptr<acc_t>(),
                {affine.weight, saved_is_output ? affine.bias : nullptr, affine.is_float, affine.zero_centered},
                shape.rows,
                shape.cols,
                rms,
                saved_is_output};
            launch_row_norm_bwd<in_t, saved_t>(args, grad_weight, grad_bias, grad_out.options().dtype(acc), stream);
          };
          with_stream_dtype<in_t>(saved.scalar_type(), run);
        });
  }
  const at::Tensor none = at::empty({0}, grad_out.options());
  std::vector<at::Tensor> result{grad_input, grad_weight.defined() ? grad_weight : none};
  if (!rms) result.push_back(grad_bias.defined() ? grad_bias : none);
  return result;
}

}  // namespace
}  // namespace norm_ext

TORCH_LIBRARY_IMPL(norm_ext, CUDA, m) {
  norm_ext::register_row_norm_ops<norm_ext::row_norm_forward, norm_ext::row_norm_backward>(m);
}
