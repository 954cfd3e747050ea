#pragma once
// Device code of the batch-norm family: the per-channel reductions (statistics, and the backward's
// sums) and the element-wise map out = (x - mean) * scale + shift [+ dy_scale * dy], in the two
// layouts of plans/batch_norm.h. Compiled by nvcc and by the SIMT host build (cuda/device_api.h).
// Every offset is int64.

#include <ATen/OpMathType.h>

#include <cstdint>
#include <type_traits>

#include "common/vec.h"
#include "common/welford.h"
#include "cuda/device_api.h"
#include "plans/batch_norm.h"

namespace norm_ext {
inline namespace NORM_EXT_GPU_NAMESPACE {

using plans::kBnThreads;

template <typename in_t>
using acc_type = at::opmath_type<in_t>;

// ----- reducers: what a thread accumulates per channel --------------------------------------------

// Welford relative to a per-channel sample value (bn_channel_shift), so that a large channel offset
// does not round the running means and the merges' deltas.
template <typename in_t>
struct StatsReducer {
  using acc_t = acc_type<in_t>;
  using State = WelfordState<acc_t>;
  const in_t* x;
  const acc_t* shift;
  acc_t* mean_out;
  acc_t* m2_out;

  __device__ State identity() const { return welford_init<acc_t>(); }
  __device__ void add(State& s, int64_t idx, int64_t c) const {
    welford_update(s, static_cast<acc_t>(x[idx]) - shift[c]);
  }
  __device__ static State combine(const State& a, const State& b) { return welford_merge(a, b); }
  __device__ void store(int64_t c, const State& s) const {
    mean_out[c] = shift[c] + s.mean;
    m2_out[c] = s.m2;
  }
};

template <typename acc_t>
struct GradSums {
  acc_t dy;
  acc_t dy_xmu;
};

template <typename in_t>
struct GradReducer {
  using acc_t = acc_type<in_t>;
  using State = GradSums<acc_t>;
  const in_t* dy;
  const in_t* x;
  const acc_t* mean;
  acc_t* sum_dy_out;
  acc_t* sum_dy_xmu_out;

  __device__ State identity() const { return {acc_t(0), acc_t(0)}; }
  __device__ void add(State& s, int64_t idx, int64_t c) const {
    const acc_t g = static_cast<acc_t>(dy[idx]);
    s.dy += g;
    s.dy_xmu += g * (static_cast<acc_t>(x[idx]) - mean[c]);
  }
  __device__ static State combine(const State& a, const State& b) { return {a.dy + b.dy, a.dy_xmu + b.dy_xmu}; }
  __device__ void store(int64_t c, const State& s) const {
    sum_dy_out[c] = s.dy;
    sum_dy_xmu_out[c] = s.dy_xmu;
  }
};

// ----- reduction kernels ---------------------------------------------------------------------------

// Four 256-thread blocks per SM (64 registers) keep half the SM's warps streaming loads; fp64 states
// take two. The compiler otherwise settles at 66 registers, three blocks.
template <typename Reducer>
inline constexpr int kBnReduceMinBlocks = std::is_same_v<typename Reducer::acc_t, double> ? 2 : 4;

// Block (x over a channel's values, y over channels), see plans::plan_bn_reduce; blockDim.x is a
// power of two.
template <typename Reducer>
__global__ void __launch_bounds__(kBnThreads, kBnReduceMinBlocks<Reducer>)
    reduce_channels_first_kernel(Reducer red, typename Reducer::State* partial, int64_t n, int64_t channels,
                                 int64_t inner) {
  using State = typename Reducer::State;
  NORM_EXT_SHARED(State, shared, [kBnThreads]);
  const int64_t splits = gridDim.x;
  const int64_t total = n * inner;
  const int64_t stride = splits * blockDim.x;
  const int64_t stride_planes = stride / inner, stride_rem = stride % inner;
  const int slot = threadIdx.y * blockDim.x + threadIdx.x;
  // The loop runs while the block's first channel exists, so that every thread reaches the barriers.
  for (int64_t first = static_cast<int64_t>(blockIdx.y) * blockDim.y; first < channels;
       first += static_cast<int64_t>(gridDim.y) * blockDim.y) {
    const int64_t c = first + threadIdx.y;
    State s = red.identity();
    const int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    int64_t plane = start / inner, i = start % inner;
    for (int64_t j = start; c < channels && j < total; j += stride) {
      red.add(s, (plane * channels + c) * inner + i, c);
      plane += stride_planes;
      i += stride_rem;
      if (i >= inner) {
        i -= inner;
        ++plane;
      }
    }
    shared[slot] = s;
    __syncthreads();
    for (int width = blockDim.x / 2; width > 0; width >>= 1) {
      if (static_cast<int>(threadIdx.x) < width) shared[slot] = Reducer::combine(shared[slot], shared[slot + width]);
      __syncthreads();
    }
    if (threadIdx.x == 0 && c < channels) partial[c * splits + blockIdx.x] = shared[slot];
    __syncthreads();
  }
}

// Block (columns, rows per block) of plans::bn_columns; the rows of a block are folded by a tree over
// threadIdx.y, a power of two.
template <typename Reducer>
__global__ void reduce_channels_last_kernel(Reducer red, typename Reducer::State* partial, const bool* pad,
                                            int64_t rows, int64_t channels) {
  using State = typename Reducer::State;
  NORM_EXT_SHARED(State, shared, [kBnThreads]);
  const int64_t splits = gridDim.y;
  const int columns = blockDim.x;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * columns + threadIdx.x;
  const int64_t row_stride = splits * blockDim.y;
  State s = red.identity();
  if (c < channels) {
    for (int64_t r = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y; r < rows; r += row_stride) {
      if (pad != nullptr && pad[r]) continue;
      red.add(s, r * channels + c, c);
    }
  }
  const int slot = threadIdx.y * columns + threadIdx.x;
  shared[slot] = s;
  __syncthreads();
  for (int height = blockDim.y / 2; height > 0; height >>= 1) {
    if (static_cast<int>(threadIdx.y) < height)
      shared[slot] = Reducer::combine(shared[slot], shared[slot + height * columns]);
    __syncthreads();
  }
  if (threadIdx.y == 0 && c < channels) partial[c * splits + blockIdx.y] = shared[threadIdx.x];
}

template <typename Reducer>
__global__ void merge_partials_kernel(Reducer red, const typename Reducer::State* partial, int64_t splits,
                                      int64_t channels) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= channels) return;
  typename Reducer::State s = partial[c * splits];
  for (int64_t b = 1; b < splits; ++b) s = Reducer::combine(s, partial[c * splits + b]);
  red.store(c, s);
}

// ----- element-wise: out = (x - mean) * scale + shift [+ dy_scale * dy] -------------------------------

template <typename acc_t>
struct AffineCoefs {
  const acc_t* mean;
  const acc_t* scale;
  const acc_t* shift;
  const acc_t* dy_scale;  // null in the forward
};

template <typename in_t>
__device__ __forceinline__ in_t affine_value(const in_t* x, const in_t* dy, int64_t idx, acc_type<in_t> m,
                                             acc_type<in_t> s, acc_type<in_t> t, acc_type<in_t> a) {
  using acc_t = acc_type<in_t>;
  acc_t r = (static_cast<acc_t>(x[idx]) - m) * s + t;
  if (dy != nullptr) r += a * static_cast<acc_t>(dy[idx]);
  return static_cast<in_t>(r);
}

// Block (x over a plane's chunks of kVec values, y over planes), see plans::plan_bn_affine. Each
// thread handles kVec consecutive values of a plane with 128-bit loads and stores when every plane
// starts 16-byte aligned (aligned base pointers and inner % kVec == 0); kVec = 1 otherwise.
template <typename in_t, int kVec>
__global__ void affine_channels_first_kernel(const in_t* x, const in_t* dy, in_t* out, AffineCoefs<acc_type<in_t>> k,
                                             int64_t planes, int64_t channels, int64_t inner) {
  using acc_t = acc_type<in_t>;
  const int64_t chunks = inner / kVec;
  for (int64_t plane = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y; plane < planes;
       plane += static_cast<int64_t>(gridDim.y) * blockDim.y) {
    const int64_t c = plane % channels;
    const acc_t m = k.mean[c], s = k.scale[c], t = k.shift[c], a = dy != nullptr ? k.dy_scale[c] : acc_t(0);
    const int64_t base = plane * inner;
    for (int64_t chunk = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; chunk < chunks;
         chunk += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int64_t off = base + chunk * kVec;
      const AlignedVector<in_t, kVec> xv = load_vector<in_t, kVec>(x + off);
      AlignedVector<in_t, kVec> gv;
      if (dy != nullptr) gv = load_vector<in_t, kVec>(dy + off);
      AlignedVector<in_t, kVec> ov;
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        acc_t r = (static_cast<acc_t>(xv.val[j]) - m) * s + t;
        if (dy != nullptr) r += a * static_cast<acc_t>(gv.val[j]);
        ov.val[j] = static_cast<in_t>(r);
      }
      store_vector<in_t, kVec>(out + off, ov);
    }
  }
}

template <typename in_t>
__global__ void affine_channels_last_kernel(const in_t* x, const in_t* dy, const bool* pad, in_t* out,
                                            AffineCoefs<acc_type<in_t>> k, int64_t rows, int64_t channels) {
  using acc_t = acc_type<in_t>;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= channels) return;
  const acc_t m = k.mean[c], s = k.scale[c], t = k.shift[c], a = dy != nullptr ? k.dy_scale[c] : acc_t(0);
  for (int64_t r = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y; r < rows;
       r += static_cast<int64_t>(gridDim.y) * blockDim.y) {
    const int64_t idx = r * channels + c;
    out[idx] = (pad != nullptr && pad[r]) ? in_t(0) : affine_value(x, dy, idx, m, s, t, a);
  }
}

}  // namespace NORM_EXT_GPU_NAMESPACE
}  // namespace norm_ext
