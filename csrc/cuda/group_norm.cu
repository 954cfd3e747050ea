// CUDA kernels of GroupNorm (and of InstanceNorm, G = C), with an optional fused SiLU on the output.
//
// Forward, two launches:
//   1. group_stats_kernel: block (group, chunk) computes the Welford state of one chunk of one
//      (n, g) group and stores it as a partial. Values are taken relative to the group's first
//      element, which keeps the running means small: with |mean| >> std a running mean of the raw
//      values carries rounding errors comparable to std, which inflate the variance.
//   2. group_norm_apply_kernel: block (group, chunk) merges its group's partials in chunk order (so
//      every block of a group derives bit-identical statistics), writes mean / rstd once, and
//      normalizes its chunk.
// Backward, two launches:
//   1. group_norm_backward_reduce_kernel: the first blocks reduce per (group, chunk) the two group
//      sums sum(w * dz) and sum(w * dz * xhat); the remaining blocks reduce dweight / dbias per channel
//      over (n, hw). Both only need the saved statistics, so they share one launch.
//   2. group_norm_grad_input_kernel: block (group, chunk) merges its group's sums in order and
//      writes grad_input.
// All reductions combine partials in an order fixed by indices only, so results are deterministic.
// Offsets are int64. Inputs are contiguous (N, C, HW) or channels_last (N, HW, C); element j of a
// group is (c = g * D + j / HW, hw = j % HW) in the former and (hw = j / D, c = g * D + j % D) in the
// latter, so the kernels serve both layouts with one index map.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "common/group_norm.h"
#include "common/welford.h"

namespace norm_ext {
namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;
constexpr int kMaxChunks = 64;
constexpr int64_t kMinChunkElements = 2048;
// Channels per block, and rows per pass, of the per-channel reduction on channels_last input.
constexpr int kChannelTile = 32;
constexpr int kRowsPerPass = kThreads / kChannelTile;

struct GroupGeometry {
  int64_t c;
  int64_t hw;
  int64_t groups;
  int64_t channels_per_group;
  int64_t group_len;  // D * HW
  int64_t chunk_len;
  int64_t chunks;
  bool channels_last;
};

// Offset of element j of group (n, g), and its channel.
__device__ __forceinline__ int64_t element_offset(const GroupGeometry& s, int64_t n, int64_t g, int64_t j,
                                                  int64_t& channel) {
  if (s.channels_last) {
    const int64_t hw = j / s.channels_per_group;
    channel = g * s.channels_per_group + j % s.channels_per_group;
    return (n * s.hw + hw) * s.c + channel;
  }
  channel = g * s.channels_per_group + j / s.hw;
  return (n * s.c + g * s.channels_per_group) * s.hw + j;
}

__device__ __forceinline__ int64_t chunk_end(const GroupGeometry& s, int64_t begin) {
  return begin + s.chunk_len < s.group_len ? begin + s.chunk_len : s.group_len;
}

template <typename T>
struct Pair {
  T a;
  T b;
};

template <typename acc_t>
__device__ __forceinline__ WelfordState<acc_t> shfl_down(const WelfordState<acc_t>& v, int delta) {
  return {__shfl_down_sync(0xffffffffu, v.count, delta), __shfl_down_sync(0xffffffffu, v.mean, delta),
          __shfl_down_sync(0xffffffffu, v.m2, delta)};
}

template <typename acc_t>
__device__ __forceinline__ Pair<acc_t> shfl_down(const Pair<acc_t>& v, int delta) {
  return {__shfl_down_sync(0xffffffffu, v.a, delta), __shfl_down_sync(0xffffffffu, v.b, delta)};
}

template <typename acc_t>
__device__ __forceinline__ WelfordState<acc_t> combine(const WelfordState<acc_t>& x, const WelfordState<acc_t>& y) {
  return welford_merge(x, y);
}

template <typename acc_t>
__device__ __forceinline__ Pair<acc_t> combine(const Pair<acc_t>& x, const Pair<acc_t>& y) {
  return {x.a + y.a, x.b + y.b};
}

// Tree reduction of a 1-D block of kThreads threads; the result is valid in thread 0. The order of
// combination depends only on thread indices.
template <typename T>
__device__ __forceinline__ T block_reduce(T v, T* warp_slots) {
  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
#pragma unroll
  for (int delta = kWarp / 2; delta > 0; delta /= 2) v = combine(v, shfl_down(v, delta));
  if (lane == 0) warp_slots[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = warp_slots[lane < kThreads / kWarp ? lane : 0];
#pragma unroll
    for (int delta = kThreads / kWarp / 2; delta > 0; delta /= 2) {
      const T other = shfl_down(v, delta);
      if (lane + delta < kThreads / kWarp) v = combine(v, other);
    }
  }
  return v;
}

template <typename acc_t>
__device__ __forceinline__ acc_t sigmoid(acc_t z) {
  return acc_t(1) / (acc_t(1) + exp(-z));
}

template <typename acc_t, typename param_t>
__device__ __forceinline__ acc_t load_param(const param_t* p, int64_t c, acc_t fallback) {
  return p != nullptr ? static_cast<acc_t>(p[c]) : fallback;
}

// dz (the gradient reaching the affine output, through the SiLU when fused) and xhat.
template <typename acc_t>
__device__ __forceinline__ Pair<acc_t> backward_element(acc_t dy, acc_t x, acc_t mu, acc_t r, acc_t w, acc_t b,
                                                        bool silu) {
  const acc_t xhat = (x - mu) * r;
  if (!silu) return {dy, xhat};
  const acc_t z = xhat * w + b;
  const acc_t sg = sigmoid(z);
  return {dy * sg * (acc_t(1) + z * (acc_t(1) - sg)), xhat};
}

template <typename in_t, typename acc_t>
__global__ void group_stats_kernel(const in_t* __restrict__ x, GroupGeometry s, WelfordState<acc_t>* partials) {
  __shared__ WelfordState<acc_t> slots[kThreads / kWarp];
  const int64_t group = blockIdx.x / s.chunks;
  const int64_t chunk = blockIdx.x % s.chunks;
  const int64_t n = group / s.groups, g = group % s.groups;
  const int64_t begin = chunk * s.chunk_len;
  const int64_t end = chunk_end(s, begin);
  int64_t channel;
  const acc_t shift = static_cast<acc_t>(x[element_offset(s, n, g, 0, channel)]);
  WelfordState<acc_t> st = welford_init<acc_t>();
  for (int64_t j = begin + threadIdx.x; j < end; j += kThreads) {
    welford_update(st, static_cast<acc_t>(x[element_offset(s, n, g, j, channel)]) - shift);
  }
  st = block_reduce(st, slots);
  if (threadIdx.x == 0) partials[blockIdx.x] = st;
}

template <typename in_t, typename param_t, typename acc_t>
__global__ void group_norm_apply_kernel(const in_t* __restrict__ x, const param_t* __restrict__ w,
                                        const param_t* __restrict__ b, const WelfordState<acc_t>* partials,
                                        GroupGeometry s, acc_t eps, bool silu, in_t* __restrict__ y,
                                        acc_t* __restrict__ mean_out, acc_t* __restrict__ rstd_out) {
  __shared__ acc_t stats[2];
  const int64_t group = blockIdx.x / s.chunks;
  const int64_t chunk = blockIdx.x % s.chunks;
  const int64_t n = group / s.groups, g = group % s.groups;
  if (threadIdx.x == 0) {
    WelfordState<acc_t> st = welford_init<acc_t>();
    for (int64_t k = 0; k < s.chunks; ++k) st = welford_merge(st, partials[group * s.chunks + k]);
    const acc_t var = st.m2 / st.count;
    int64_t channel;
    stats[0] = static_cast<acc_t>(x[element_offset(s, n, g, 0, channel)]) + st.mean;
    stats[1] = acc_t(1) / sqrt((var > acc_t(0) ? var : acc_t(0)) + eps);
    if (chunk == 0) {
      mean_out[group] = stats[0];
      rstd_out[group] = stats[1];
    }
  }
  __syncthreads();
  const acc_t mu = stats[0], r = stats[1];
  const int64_t begin = chunk * s.chunk_len;
  const int64_t end = chunk_end(s, begin);
  for (int64_t j = begin + threadIdx.x; j < end; j += kThreads) {
    int64_t c;
    const int64_t off = element_offset(s, n, g, j, c);
    acc_t z = (static_cast<acc_t>(x[off]) - mu) * (r * load_param(w, c, acc_t(1))) + load_param(b, c, acc_t(0));
    if (silu) z *= sigmoid(z);
    y[off] = static_cast<in_t>(z);
  }
}

// Blocks [0, N * G * chunks): per (group, chunk) the sums of w * dz and w * dz * xhat.
// Blocks after them: dweight / dbias for one channel (contiguous) or kChannelTile channels
// (channels_last), over every (n, hw).
template <typename in_t, typename param_t, typename acc_t>
__global__ void group_norm_backward_reduce_kernel(const in_t* __restrict__ dy, const in_t* __restrict__ x,
                                                  const acc_t* __restrict__ mean, const acc_t* __restrict__ rstd,
                                                  const param_t* __restrict__ w, const param_t* __restrict__ b,
                                                  GroupGeometry s, int64_t batch, bool silu,
                                                  Pair<acc_t>* group_partials, param_t* __restrict__ dw,
                                                  param_t* __restrict__ db) {
  __shared__ Pair<acc_t> slots[kThreads];
  const int64_t group_blocks = batch * s.groups * s.chunks;
  if (blockIdx.x < group_blocks) {
    const int64_t group = blockIdx.x / s.chunks;
    const int64_t chunk = blockIdx.x % s.chunks;
    const int64_t n = group / s.groups, g = group % s.groups;
    const acc_t mu = mean[group], r = rstd[group];
    const int64_t begin = chunk * s.chunk_len;
    const int64_t end = chunk_end(s, begin);
    Pair<acc_t> acc{acc_t(0), acc_t(0)};
    for (int64_t j = begin + threadIdx.x; j < end; j += kThreads) {
      int64_t c;
      const int64_t off = element_offset(s, n, g, j, c);
      const acc_t wc = load_param(w, c, acc_t(1));
      const Pair<acc_t> e = backward_element(static_cast<acc_t>(dy[off]), static_cast<acc_t>(x[off]), mu, r, wc,
                                             load_param(b, c, acc_t(0)), silu);
      acc.a += wc * e.a;
      acc.b += wc * e.a * e.b;
    }
    acc = block_reduce(acc, slots);
    if (threadIdx.x == 0) group_partials[blockIdx.x] = acc;
    return;
  }
  const int64_t channel_block = blockIdx.x - group_blocks;
  const int64_t rows = batch * s.hw;
  if (!s.channels_last) {
    const int64_t c = channel_block;
    const int64_t g = c / s.channels_per_group;
    const acc_t wc = load_param(w, c, acc_t(1)), bc = load_param(b, c, acc_t(0));
    Pair<acc_t> acc{acc_t(0), acc_t(0)};
    for (int64_t i = threadIdx.x; i < rows; i += kThreads) {
      const int64_t n = i / s.hw;
      const int64_t off = (n * s.c + c) * s.hw + i % s.hw;
      const int64_t group = n * s.groups + g;
      const Pair<acc_t> e = backward_element(static_cast<acc_t>(dy[off]), static_cast<acc_t>(x[off]), mean[group],
                                             rstd[group], wc, bc, silu);
      acc.a += e.a;
      acc.b += e.a * e.b;
    }
    acc = block_reduce(acc, slots);
    if (threadIdx.x == 0) {
      if (db != nullptr) db[c] = static_cast<param_t>(acc.a);
      if (dw != nullptr) dw[c] = static_cast<param_t>(acc.b);
    }
    return;
  }
  // channels_last: lanes take consecutive channels of a row (coalesced), warps take rows.
  const int lane = threadIdx.x % kChannelTile;
  const int row_lane = threadIdx.x / kChannelTile;
  const int64_t c = channel_block * kChannelTile + lane;
  Pair<acc_t> acc{acc_t(0), acc_t(0)};
  if (c < s.c) {
    const int64_t g = c / s.channels_per_group;
    const acc_t wc = load_param(w, c, acc_t(1)), bc = load_param(b, c, acc_t(0));
    for (int64_t row = row_lane; row < rows; row += kRowsPerPass) {
      const int64_t group = (row / s.hw) * s.groups + g;
      const int64_t off = row * s.c + c;
      const Pair<acc_t> e = backward_element(static_cast<acc_t>(dy[off]), static_cast<acc_t>(x[off]), mean[group],
                                             rstd[group], wc, bc, silu);
      acc.a += e.a;
      acc.b += e.a * e.b;
    }
  }
  slots[threadIdx.x] = acc;
  __syncthreads();
  if (row_lane == 0 && c < s.c) {
    for (int k = 1; k < kRowsPerPass; ++k) acc = combine(acc, slots[k * kChannelTile + lane]);
    if (db != nullptr) db[c] = static_cast<param_t>(acc.a);
    if (dw != nullptr) dw[c] = static_cast<param_t>(acc.b);
  }
}

template <typename in_t, typename param_t, typename acc_t>
__global__ void group_norm_grad_input_kernel(const in_t* __restrict__ dy, const in_t* __restrict__ x,
                                             const acc_t* __restrict__ mean, const acc_t* __restrict__ rstd,
                                             const param_t* __restrict__ w, const param_t* __restrict__ b,
                                             const Pair<acc_t>* group_partials, GroupGeometry s, bool silu,
                                             in_t* __restrict__ dx) {
  __shared__ acc_t coef[2];
  const int64_t group = blockIdx.x / s.chunks;
  const int64_t chunk = blockIdx.x % s.chunks;
  if (threadIdx.x == 0) {
    Pair<acc_t> total{acc_t(0), acc_t(0)};
    for (int64_t k = 0; k < s.chunks; ++k) total = combine(total, group_partials[group * s.chunks + k]);
    const acc_t inv_count = acc_t(1) / static_cast<acc_t>(s.group_len);
    coef[0] = total.a * inv_count;
    coef[1] = total.b * inv_count;
  }
  __syncthreads();
  const acc_t mean_dz = coef[0], mean_dz_xhat = coef[1];
  const acc_t mu = mean[group], r = rstd[group];
  const int64_t n = group / s.groups, g = group % s.groups;
  const int64_t begin = chunk * s.chunk_len;
  const int64_t end = chunk_end(s, begin);
  for (int64_t j = begin + threadIdx.x; j < end; j += kThreads) {
    int64_t c;
    const int64_t off = element_offset(s, n, g, j, c);
    const acc_t wc = load_param(w, c, acc_t(1));
    const Pair<acc_t> e = backward_element(static_cast<acc_t>(dy[off]), static_cast<acc_t>(x[off]), mu, r, wc,
                                           load_param(b, c, acc_t(0)), silu);
    dx[off] = static_cast<in_t>(r * (e.a * wc - mean_dz - e.b * mean_dz_xhat));
  }
}

GroupGeometry make_geometry(const GroupNormShape& s) {
  GroupGeometry geo{};
  geo.c = s.c;
  geo.hw = s.hw;
  geo.groups = s.groups;
  geo.channels_per_group = s.channels_per_group;
  geo.channels_last = s.channels_last;
  geo.group_len = s.channels_per_group * s.hw;
  // Enough blocks to fill the GPU when N * G is small, without chunks shorter than a few passes.
  const int64_t target_blocks = 4 * static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
  const int64_t want = (target_blocks + s.n * s.groups - 1) / (s.n * s.groups);
  const int64_t most = std::max<int64_t>(1, geo.group_len / kMinChunkElements);
  geo.chunks = std::clamp<int64_t>(want, 1, std::min<int64_t>(most, kMaxChunks));
  geo.chunk_len = (geo.group_len + geo.chunks - 1) / geo.chunks;
  geo.chunks = (geo.group_len + geo.chunk_len - 1) / geo.chunk_len;
  return geo;
}

bool defined(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined();
}

at::ScalarType acc_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// Runs body(param_t{}) with param_t the parameters' dtype: the input's, or float32.
template <typename in_t, typename Body>
void dispatch_param_type(const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, Body body) {
  const at::Tensor* p = defined(weight) ? &*weight : (defined(bias) ? &*bias : nullptr);
  if constexpr (!std::is_same_v<in_t, float> && !std::is_same_v<in_t, double>) {
    if (p != nullptr && p->scalar_type() == at::kFloat) {
      body(float{});
      return;
    }
  }
  body(in_t{});
}

template <typename param_t>
const param_t* param_ptr(const std::optional<at::Tensor>& p) {
  return defined(p) ? p->const_data_ptr<param_t>() : nullptr;
}

void check_cuda(const char* op, const at::Tensor& input, const std::optional<at::Tensor>& weight,
                const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(input.is_cuda(), op, ": expected a CUDA input, got ", input.device());
  if (defined(weight)) check_same_device(op, "weight", *weight, input);
  if (defined(bias)) check_same_device(op, "bias", *bias, input);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_cuda(const at::Tensor& input_, int64_t num_groups,
                                                               const std::optional<at::Tensor>& weight_,
                                                               const std::optional<at::Tensor>& bias_, double eps,
                                                               std::optional<c10::string_view> activation) {
  constexpr const char* op = "group_norm";
  check_cuda(op, input_, weight_, bias_);
  const GroupNormShape s = check_group_norm_inputs(op, input_, num_groups, weight_, bias_, eps);
  const bool silu = parse_group_norm_activation(op, activation);
  const c10::cuda::CUDAGuard guard(input_.device());
  const at::MemoryFormat format = group_norm_memory_format(input_);
  const at::Tensor input = input_.contiguous(format);
  const std::optional<at::Tensor> weight = defined(weight_) ? std::optional(weight_->contiguous()) : std::nullopt;
  const std::optional<at::Tensor> bias = defined(bias_) ? std::optional(bias_->contiguous()) : std::nullopt;
  const auto stat_opts = input.options().dtype(acc_dtype(input.scalar_type()));
  at::Tensor out = at::empty(input.sizes(), input.options().memory_format(format));
  at::Tensor mean = at::empty({s.n, s.groups}, stat_opts);
  at::Tensor rstd = at::empty({s.n, s.groups}, stat_opts);
  if (input.numel() == 0) {
    mean.zero_();
    rstd.fill_(1.0 / std::sqrt(eps));
    return {out, mean, rstd};
  }
  const GroupGeometry geo = make_geometry(s);
  const int64_t blocks = s.n * s.groups * geo.chunks;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "norm_ext_group_norm_cuda", [&] {
    using in_t = scalar_t;
    using acc_t = at::opmath_type<in_t>;
    at::Tensor partials = at::empty({blocks * 3}, stat_opts);
    auto* partial_ptr = reinterpret_cast<WelfordState<acc_t>*>(partials.mutable_data_ptr<acc_t>());
    group_stats_kernel<in_t, acc_t><<<blocks, kThreads, 0, stream>>>(input.const_data_ptr<in_t>(), geo, partial_ptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    dispatch_param_type<in_t>(weight, bias, [&](auto param_tag) {
      using param_t = decltype(param_tag);
      group_norm_apply_kernel<in_t, param_t, acc_t><<<blocks, kThreads, 0, stream>>>(
          input.const_data_ptr<in_t>(), param_ptr<param_t>(weight), param_ptr<param_t>(bias), partial_ptr, geo,
          static_cast<acc_t>(eps), silu, out.mutable_data_ptr<in_t>(), mean.mutable_data_ptr<acc_t>(),
          rstd.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {out, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_backward_cuda(
    const at::Tensor& grad_out_, const at::Tensor& input_, int64_t num_groups, const at::Tensor& mean_,
    const at::Tensor& rstd_, const std::optional<at::Tensor>& weight_, const std::optional<at::Tensor>& bias_,
    std::optional<c10::string_view> activation) {
  constexpr const char* op = "group_norm_backward";
  check_cuda(op, input_, weight_, bias_);
  const GroupNormShape s =
      check_group_norm_backward_inputs(op, grad_out_, input_, num_groups, mean_, rstd_, weight_, bias_);
  const bool silu = parse_group_norm_activation(op, activation);
  const c10::cuda::CUDAGuard guard(input_.device());
  const at::MemoryFormat format = group_norm_memory_format(input_);
  const at::Tensor input = input_.contiguous(format);
  const at::Tensor grad_out = grad_out_.contiguous(format);
  const at::Tensor mean = mean_.contiguous();
  const at::Tensor rstd = rstd_.contiguous();
  const std::optional<at::Tensor> weight = defined(weight_) ? std::optional(weight_->contiguous()) : std::nullopt;
  const std::optional<at::Tensor> bias = defined(bias_) ? std::optional(bias_->contiguous()) : std::nullopt;
  at::Tensor grad_input = at::empty(input.sizes(), input.options().memory_format(format));
  at::Tensor dw = defined(weight) ? at::empty({s.c}, weight->options()) : at::Tensor();
  at::Tensor db = defined(bias) ? at::empty({s.c}, bias->options()) : at::Tensor();
  const at::Tensor empty = at::empty({0}, input.options());
  if (input.numel() == 0) {
    if (dw.defined()) dw.zero_();
    if (db.defined()) db.zero_();
    return {grad_input, dw.defined() ? dw : empty, db.defined() ? db : empty};
  }
  const GroupGeometry geo = make_geometry(s);
  const int64_t blocks = s.n * s.groups * geo.chunks;
  const int64_t channel_blocks =
      (dw.defined() || db.defined()) ? (s.channels_last ? (s.c + kChannelTile - 1) / kChannelTile : s.c) : 0;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "norm_ext_group_norm_bwd_cuda", [&] {
    using in_t = scalar_t;
    using acc_t = at::opmath_type<in_t>;
    at::Tensor partials = at::empty({blocks * 2}, input.options().dtype(acc_dtype(input.scalar_type())));
    auto* partial_ptr = reinterpret_cast<Pair<acc_t>*>(partials.mutable_data_ptr<acc_t>());
    dispatch_param_type<in_t>(weight, bias, [&](auto param_tag) {
      using param_t = decltype(param_tag);
      group_norm_backward_reduce_kernel<in_t, param_t, acc_t><<<blocks + channel_blocks, kThreads, 0, stream>>>(
          grad_out.const_data_ptr<in_t>(), input.const_data_ptr<in_t>(), mean.const_data_ptr<acc_t>(),
          rstd.const_data_ptr<acc_t>(), param_ptr<param_t>(weight), param_ptr<param_t>(bias), geo, s.n, silu,
          partial_ptr, dw.defined() ? dw.mutable_data_ptr<param_t>() : nullptr,
          db.defined() ? db.mutable_data_ptr<param_t>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      group_norm_grad_input_kernel<in_t, param_t, acc_t><<<blocks, kThreads, 0, stream>>>(
          grad_out.const_data_ptr<in_t>(), input.const_data_ptr<in_t>(), mean.const_data_ptr<acc_t>(),
          rstd.const_data_ptr<acc_t>(), param_ptr<param_t>(weight), param_ptr<param_t>(bias), partial_ptr, geo, silu,
          grad_input.mutable_data_ptr<in_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {grad_input, dw.defined() ? dw : empty, db.defined() ? db : empty};
}

}  // namespace
}  // namespace norm_ext

TORCH_LIBRARY_IMPL(norm_ext, CUDA, m) {
  m.impl("group_norm", &norm_ext::group_norm_cuda);
  m.impl("group_norm_backward", &norm_ext::group_norm_backward_cuda);
}
