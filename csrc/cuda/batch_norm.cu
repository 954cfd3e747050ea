// CUDA kernels of the batch-norm family (see csrc/cpu/batch_norm.cpp for the ops' contract).
//
// Reductions run in two kernels: a partial kernel writes one state per (channel, split), then a
// merge kernel folds the splits of each channel in order, so results are deterministic.
//  * channels-first ([N][C][inner]): grid (splits, channels). Threads walk the channel's N*inner
//    values in flat order, so consecutive threads read consecutive addresses of a plane.
//  * channels-last ([rows][C]): 32x8 blocks; threadIdx.x indexes 32 consecutive channels of a row
//    (one 128-byte transaction for fp32), threadIdx.y and blockIdx.y stride over rows. A C that is
//    not a multiple of 32 (C = 65) leaves the tail lanes of the last column block idle.
// The element-wise kernels use the same two mappings, with 128-bit accesses on aligned
// channels-first planes. Every offset is int64.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "common/batch_norm.h"
#include "common/vec.h"
#include "common/welford.h"

namespace norm_ext {
namespace {

constexpr int kThreads = 256;
constexpr int kColumns = 32;  // channels per block in the channels-last kernels
constexpr int kRowsPerBlock = kThreads / kColumns;
constexpr int64_t kMaxGridY = 65535;

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

template <typename Reducer>
__global__ void reduce_channels_first_kernel(Reducer red, typename Reducer::State* partial, int64_t n, int64_t channels,
                                             int64_t inner) {
  using State = typename Reducer::State;
  __shared__ State shared[kThreads];
  const int64_t splits = gridDim.x;
  const int64_t total = n * inner;
  const int64_t stride = splits * blockDim.x;
  const int64_t stride_planes = stride / inner, stride_rem = stride % inner;
  for (int64_t c = blockIdx.y; c < channels; c += gridDim.y) {
    State s = red.identity();
    const int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    int64_t plane = start / inner, i = start % inner;
    for (int64_t j = start; j < total; j += stride) {
      red.add(s, (plane * channels + c) * inner + i, c);
      plane += stride_planes;
      i += stride_rem;
      if (i >= inner) {
        i -= inner;
        ++plane;
      }
    }
    shared[threadIdx.x] = s;
    __syncthreads();
    for (int width = kThreads / 2; width > 0; width >>= 1) {
      if (threadIdx.x < width) shared[threadIdx.x] = Reducer::combine(shared[threadIdx.x], shared[threadIdx.x + width]);
      __syncthreads();
    }
    if (threadIdx.x == 0) partial[c * splits + blockIdx.x] = shared[0];
    __syncthreads();
  }
}

template <typename Reducer>
__global__ void reduce_channels_last_kernel(Reducer red, typename Reducer::State* partial, const bool* pad,
                                            int64_t rows, int64_t channels) {
  using State = typename Reducer::State;
  __shared__ State shared[kRowsPerBlock][kColumns];
  const int64_t splits = gridDim.y;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kColumns + threadIdx.x;
  State s = red.identity();
  if (c < channels) {
    for (int64_t r = static_cast<int64_t>(blockIdx.y) * kRowsPerBlock + threadIdx.y; r < rows;
         r += splits * kRowsPerBlock) {
      if (pad != nullptr && pad[r]) continue;
      red.add(s, r * channels + c, c);
    }
  }
  shared[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  for (int height = kRowsPerBlock / 2; height > 0; height >>= 1) {
    if (threadIdx.y < height) {
      shared[threadIdx.y][threadIdx.x] =
          Reducer::combine(shared[threadIdx.y][threadIdx.x], shared[threadIdx.y + height][threadIdx.x]);
    }
    __syncthreads();
  }
  if (threadIdx.y == 0 && c < channels) partial[c * splits + blockIdx.y] = shared[0][threadIdx.x];
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

int64_t target_blocks() {
  return static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 8;
}

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

template <typename Reducer>
void launch_reduction(const Reducer& red, const ChannelView& v, const bool* pad, const at::Tensor& like) {
  using State = typename Reducer::State;
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t channels = v.channels;
  int64_t splits;
  at::Tensor workspace;
  if (v.channels_last) {
    const int64_t column_blocks = ceil_div(channels, kColumns);
    splits = std::clamp<int64_t>(std::min(ceil_div(v.outer, kRowsPerBlock * 4), target_blocks() / column_blocks), 1,
                                 kMaxGridY);
    workspace = at::empty({channels * splits * static_cast<int64_t>(sizeof(State))}, like.options().dtype(at::kByte));
    State* partial = reinterpret_cast<State*>(workspace.mutable_data_ptr());
    reduce_channels_last_kernel<<<dim3(column_blocks, splits), dim3(kColumns, kRowsPerBlock), 0, stream>>>(
        red, partial, pad, v.outer, channels);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    const int64_t per_channel = v.outer * v.inner;
    splits = std::clamp<int64_t>(std::min(ceil_div(per_channel, kThreads * 4), target_blocks() / channels + 1), 1,
                                 kMaxGridY);
    workspace = at::empty({channels * splits * static_cast<int64_t>(sizeof(State))}, like.options().dtype(at::kByte));
    State* partial = reinterpret_cast<State*>(workspace.mutable_data_ptr());
    reduce_channels_first_kernel<<<dim3(splits, std::min(channels, kMaxGridY)), kThreads, 0, stream>>>(
        red, partial, v.outer, channels, v.inner);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  merge_partials_kernel<<<ceil_div(channels, kThreads), kThreads, 0, stream>>>(
      red, reinterpret_cast<const State*>(workspace.const_data_ptr()), splits, channels);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
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

// Each thread handles kVec consecutive values of a plane with 128-bit loads and stores when every
// plane starts 16-byte aligned (aligned base pointers and inner % kVec == 0); kVec = 1 otherwise.
template <typename in_t, int kVec>
__global__ void affine_channels_first_kernel(const in_t* x, const in_t* dy, in_t* out, AffineCoefs<acc_type<in_t>> k,
                                             int64_t planes, int64_t channels, int64_t inner) {
  using acc_t = acc_type<in_t>;
  const int64_t chunks = inner / kVec;
  for (int64_t plane = blockIdx.y; plane < planes; plane += gridDim.y) {
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
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kColumns + threadIdx.x;
  if (c >= channels) return;
  const acc_t m = k.mean[c], s = k.scale[c], t = k.shift[c], a = dy != nullptr ? k.dy_scale[c] : acc_t(0);
  for (int64_t r = static_cast<int64_t>(blockIdx.y) * kRowsPerBlock + threadIdx.y; r < rows;
       r += static_cast<int64_t>(gridDim.y) * kRowsPerBlock) {
    const int64_t idx = r * channels + c;
    out[idx] = (pad != nullptr && pad[r]) ? in_t(0) : affine_value(x, dy, idx, m, s, t, a);
  }
}

// ----- op wrappers -----------------------------------------------------------------------------------

void check_cuda(const char* op, const at::Tensor& input) {
  TORCH_CHECK(input.device().is_cuda(), op, ": expected CUDA tensors, got input on ", input.device());
}

// (N, C, 1...) contiguous input is also [rows][C]; reading it as such keeps every thread busy.
ChannelView kernel_view(const at::Tensor& input, bool cl) {
  ChannelView v = bn_channel_view(input, cl);
  if (!v.channels_last && v.inner == 1) v = {true, v.outer, v.channels, 1};
  return v;
}

const bool* mask_ptr(const at::Tensor& mask) {
  return mask.defined() ? mask.const_data_ptr<bool>() : nullptr;
}

at::Tensor mask_or_undefined(const std::optional<at::Tensor>& pad_mask) {
  return bn_defined(pad_mask) ? pad_mask->contiguous() : at::Tensor();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_stats_cuda(const at::Tensor& input_,
                                                                     const std::optional<at::Tensor>& pad_mask) {
  constexpr const char* op = "batch_norm_stats";
  check_bn_input(op, input_);
  check_cuda(op, input_);
  check_pad_mask(op, pad_mask, input_);
  const c10::cuda::CUDAGuard guard(input_.device());
  const bool cl = use_channels_last(input_);
  const at::Tensor input = to_bn_layout(input_, cl);
  const at::Tensor mask = mask_or_undefined(pad_mask);
  const ChannelView v = kernel_view(input, cl);
  const auto acc_opts = input.options().dtype(bn_acc_dtype(input.scalar_type()));
  at::Tensor mean = at::zeros({v.channels}, acc_opts);
  at::Tensor m2 = at::zeros({v.channels}, acc_opts);
  at::Tensor count = bn_count(input, pad_mask);
  if (input.numel() == 0) return {count, mean, m2};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "norm_ext_batch_norm_stats_cuda", [&] {
    using acc_t = acc_type<scalar_t>;
    const at::Tensor shift = bn_channel_shift(input, mask, mean.scalar_type());
    const StatsReducer<scalar_t> red{input.const_data_ptr<scalar_t>(), shift.const_data_ptr<acc_t>(),
                                     mean.mutable_data_ptr<acc_t>(), m2.mutable_data_ptr<acc_t>()};
    launch_reduction(red, v, mask_ptr(mask), input);
  });
  return {count, mean, m2};
}

at::Tensor run_affine(const at::Tensor& input, const at::Tensor* grad_out, const at::Tensor& mask, bool cl,
                      const ChannelAffine& coefs) {
  at::Tensor out = at::empty_like(input);
  if (input.numel() == 0) return out;
  const ChannelView v = kernel_view(input, cl);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "norm_ext_batch_norm_elemt_cuda", [&] {
    using acc_t = acc_type<scalar_t>;
    const AffineCoefs<acc_t> k{coefs.mean.const_data_ptr<acc_t>(), coefs.scale.const_data_ptr<acc_t>(),
                               coefs.shift.const_data_ptr<acc_t>(),
                               coefs.dy_scale.defined() ? coefs.dy_scale.const_data_ptr<acc_t>() : nullptr};
    const scalar_t* dy = grad_out != nullptr ? grad_out->const_data_ptr<scalar_t>() : nullptr;
    if (v.channels_last) {
      const int64_t column_blocks = ceil_div(v.channels, kColumns);
      const int64_t row_blocks = std::min(ceil_div(v.outer, kRowsPerBlock), kMaxGridY);
      affine_channels_last_kernel<scalar_t>
          <<<dim3(column_blocks, row_blocks), dim3(kColumns, kRowsPerBlock), 0, stream>>>(
              input.const_data_ptr<scalar_t>(), dy, mask_ptr(mask), out.mutable_data_ptr<scalar_t>(), k, v.outer,
              v.channels);
    } else {
      constexpr int kVec = vec_width_128<scalar_t>();
      const bool vectorized = v.inner % kVec == 0 && is_aligned<16>(input.const_data_ptr()) &&
                              is_aligned<16>(out.const_data_ptr()) && (dy == nullptr || is_aligned<16>(dy));
      const int64_t planes = v.outer * v.channels;
      const int64_t per_thread = vectorized ? kVec : 1;
      const int64_t inner_blocks = std::min<int64_t>(ceil_div(v.inner, kThreads * per_thread), 1024);
      const dim3 grid(inner_blocks, std::min(planes, kMaxGridY));
      if (vectorized) {
        affine_channels_first_kernel<scalar_t, kVec><<<grid, kThreads, 0, stream>>>(
            input.const_data_ptr<scalar_t>(), dy, out.mutable_data_ptr<scalar_t>(), k, planes, v.channels, v.inner);
      } else {
        affine_channels_first_kernel<scalar_t, 1><<<grid, kThreads, 0, stream>>>(
            input.const_data_ptr<scalar_t>(), dy, out.mutable_data_ptr<scalar_t>(), k, planes, v.channels, v.inner);
      }
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor batch_norm_elemt_cuda(const at::Tensor& input_, const at::Tensor& mean, const at::Tensor& invstd,
                                 const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                                 const std::optional<at::Tensor>& pad_mask) {
  constexpr const char* op = "batch_norm_elemt";
  check_bn_input(op, input_);
  check_cuda(op, input_);
  check_channel_vector(op, "mean", mean, input_);
  check_channel_vector(op, "invstd", invstd, input_);
  check_bn_affine(op, input_, weight, bias);
  check_pad_mask(op, pad_mask, input_);
  const c10::cuda::CUDAGuard guard(input_.device());
  const bool cl = use_channels_last(input_);
  const at::Tensor input = to_bn_layout(input_, cl);
  const ChannelAffine coefs = forward_affine(mean, invstd, weight, bias, bn_acc_dtype(input.scalar_type()));
  return run_affine(input, nullptr, mask_or_undefined(pad_mask), cl, coefs);
}

// batch_norm_train and its backward: the reduction and affine kernels back to back. The second read
// of x comes from L2 only when the input fits it (50 MB on an H100); a fused kernel that keeps each
// channel on chip between the two passes is not written yet.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_train_cuda(
    const at::Tensor& input, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    double eps) {
  constexpr const char* op = "batch_norm_train";
  check_bn_train_inputs(op, input, weight, bias, eps);
  check_cuda(op, input);
  const c10::cuda::CUDAGuard guard(input.device());
  const auto [count, mean, m2] = batch_norm_stats_cuda(input, std::nullopt);
  const at::Tensor invstd = (m2 / count.clamp_min(1) + eps).rsqrt();
  return {batch_norm_elemt_cuda(input, mean, invstd, weight, bias, std::nullopt), mean, m2, invstd};
}

std::tuple<at::Tensor, at::Tensor> batch_norm_backward_reduce_cuda(const at::Tensor& grad_out_,
                                                                   const at::Tensor& input_, const at::Tensor& mean_,
                                                                   const at::Tensor& invstd,
                                                                   const std::optional<at::Tensor>& pad_mask) {
  constexpr const char* op = "batch_norm_backward_reduce";
  check_bn_backward_inputs(op, grad_out_, input_, mean_, invstd);
  check_cuda(op, input_);
  check_pad_mask(op, pad_mask, input_);
  const c10::cuda::CUDAGuard guard(input_.device());
  const bool cl = use_channels_last(input_);
  const at::Tensor input = to_bn_layout(input_, cl);
  const at::Tensor grad_out = to_bn_layout(grad_out_, cl);
  const at::Tensor mask = mask_or_undefined(pad_mask);
  const at::ScalarType acc = bn_acc_dtype(input.scalar_type());
  const at::Tensor mean = as_acc_vector(mean_, acc);
  const ChannelView v = kernel_view(input, cl);
  at::Tensor sum_dy = at::zeros({v.channels}, input.options().dtype(acc));
  at::Tensor sum_dy_xmu = at::zeros_like(sum_dy);
  if (input.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, input.scalar_type(), "norm_ext_batch_norm_backward_reduce_cuda", [&] {
          using acc_t = acc_type<scalar_t>;
          const GradReducer<scalar_t> red{grad_out.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(),
                                          mean.const_data_ptr<acc_t>(), sum_dy.mutable_data_ptr<acc_t>(),
                                          sum_dy_xmu.mutable_data_ptr<acc_t>()};
          launch_reduction(red, v, mask_ptr(mask), input);
        });
  }
  return {sum_dy, sum_dy_xmu * invstd.to(acc)};
}

at::Tensor batch_norm_backward_elemt_cuda(const at::Tensor& grad_out_, const at::Tensor& input_, const at::Tensor& mean,
                                          const at::Tensor& invstd, const std::optional<at::Tensor>& weight,
                                          const std::optional<at::Tensor>& mean_dy,
                                          const std::optional<at::Tensor>& mean_dy_xhat,
                                          const std::optional<at::Tensor>& pad_mask) {
  constexpr const char* op = "batch_norm_backward_elemt";
  check_bn_backward_inputs(op, grad_out_, input_, mean, invstd);
  check_cuda(op, input_);
  if (bn_defined(mean_dy)) check_channel_vector(op, "mean_dy", *mean_dy, input_);
  if (bn_defined(mean_dy_xhat)) check_channel_vector(op, "mean_dy_xhat", *mean_dy_xhat, input_);
  check_bn_affine(op, input_, weight, std::nullopt);
  check_pad_mask(op, pad_mask, input_);
  const c10::cuda::CUDAGuard guard(input_.device());
  const bool cl = use_channels_last(input_);
  const at::Tensor input = to_bn_layout(input_, cl);
  const at::Tensor grad_out = to_bn_layout(grad_out_, cl);
  const ChannelAffine coefs =
      backward_affine(mean, invstd, weight, mean_dy, mean_dy_xhat, bn_acc_dtype(input.scalar_type()));
  return run_affine(input, &grad_out, mask_or_undefined(pad_mask), cl, coefs);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_train_backward_cuda(const at::Tensor& grad_out,
                                                                              const at::Tensor& input,
                                                                              const at::Tensor& mean,
                                                                              const at::Tensor& invstd,
                                                                              const std::optional<at::Tensor>& weight) {
  constexpr const char* op = "batch_norm_train_backward";
  check_bn_backward_inputs(op, grad_out, input, mean, invstd);
  check_cuda(op, input);
  check_bn_affine(op, input, weight, std::nullopt);
  const c10::cuda::CUDAGuard guard(input.device());
  const auto [sum_dy, sum_dy_xhat] = batch_norm_backward_reduce_cuda(grad_out, input, mean, invstd, std::nullopt);
  const double count = static_cast<double>(std::max<int64_t>(1, input.numel() / std::max<int64_t>(input.size(1), 1)));
  const at::Tensor grad_input = batch_norm_backward_elemt_cuda(grad_out, input, mean, invstd, weight, sum_dy / count,
                                                               sum_dy_xhat / count, std::nullopt);
  return {grad_input, sum_dy, sum_dy_xhat};
}

}  // namespace
}  // namespace norm_ext

TORCH_LIBRARY_IMPL(norm_ext, CUDA, m) {
  m.impl("batch_norm_stats", &norm_ext::batch_norm_stats_cuda);
  m.impl("batch_norm_train", &norm_ext::batch_norm_train_cuda);
  m.impl("batch_norm_train_backward", &norm_ext::batch_norm_train_backward_cuda);
  m.impl("batch_norm_elemt", &norm_ext::batch_norm_elemt_cuda);
  m.impl("batch_norm_backward_reduce", &norm_ext::batch_norm_backward_reduce_cuda);
  m.impl("batch_norm_backward_elemt", &norm_ext::batch_norm_backward_elemt_cuda);
}
