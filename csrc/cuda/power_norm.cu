// CUDA kernels of PowerNorm (Shen et al. 2020) over (B, T, C) input viewed as tokens x channels.
//
// Per-channel reductions use a 2-D grid: blockIdx.x picks 32 consecutive channels (one per lane, so
// each warp reads a coalesced run of a token row), blockIdx.y a block of tokens whose size depends
// only on the token count; the 8 thread rows of a block stride over its tokens and are combined in
// shared memory in a fixed order, each block writes one row of partials, and a finalize kernel sums
// the rows in order. Results are therefore deterministic. The forward is one elementwise launch.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "common/reparam_checks.h"

namespace norm_ext {
namespace {

constexpr int kLanes = 32;
constexpr int kRows = 8;
constexpr int64_t kMinTokensPerBlock = 64;
constexpr int64_t kMaxTokenBlocks = 512;

struct TokenBlocks {
  int64_t size;
  int64_t count;
};

TokenBlocks token_blocks(int64_t tokens) {
  const int64_t size = std::max(kMinTokensPerBlock, (tokens + kMaxTokenBlocks - 1) / kMaxTokenBlocks);
  return {size, (tokens + size - 1) / size};
}

// Sums `value` over the kRows thread rows of the block; the result is valid in row 0.
template <typename acc_t>
__device__ __forceinline__ acc_t sum_rows(acc_t value, acc_t (*scratch)[kLanes]) {
  scratch[threadIdx.y][threadIdx.x] = value;
  __syncthreads();
  acc_t total = 0;
  if (threadIdx.y == 0) {
#pragma unroll
    for (int r = 0; r < kRows; ++r) total += scratch[r][threadIdx.x];
  }
  __syncthreads();
  return total;
}

// partial_sq[block][c] = sum of x^2 over the block's valid tokens; partial_count[block] = valid tokens.
template <typename scalar_t, typename acc_t>
__global__ void power_norm_stats_kernel(const scalar_t* __restrict__ x, const bool* __restrict__ pad,
                                        acc_t* __restrict__ partial_sq, int64_t* __restrict__ partial_count,
                                        int64_t tokens, int64_t channels, int64_t block_tokens) {
  __shared__ acc_t scratch[kRows][kLanes];
  __shared__ int64_t count_scratch[kRows];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kLanes + threadIdx.x;
  const int64_t begin = static_cast<int64_t>(blockIdx.y) * block_tokens;
  const int64_t end = std::min(tokens, begin + block_tokens);
  acc_t sum_sq = 0;
  int64_t valid = 0;
  for (int64_t n = begin + threadIdx.y; n < end; n += kRows) {
    if (pad != nullptr && pad[n]) continue;
    ++valid;
    if (c < channels) {
      const acc_t v = static_cast<acc_t>(x[n * channels + c]);
      sum_sq += v * v;
    }
  }
  if (threadIdx.x == 0) count_scratch[threadIdx.y] = valid;
  const acc_t total = sum_rows(sum_sq, scratch);
  if (threadIdx.y == 0) {
    if (c < channels) partial_sq[blockIdx.y * channels + c] = total;
    if (blockIdx.x == 0 && threadIdx.x == 0) {
      int64_t block_count = 0;
      for (int r = 0; r < kRows; ++r) block_count += count_scratch[r];
      partial_count[blockIdx.y] = block_count;
    }
  }
}

// out[c] = sum over the `rows` partial rows, in row order; thread 0 also totals the counts.
template <typename acc_t>
__global__ void sum_partials_kernel(const acc_t* __restrict__ partial, const int64_t* __restrict__ partial_count,
                                    acc_t* __restrict__ out, acc_t* __restrict__ count, int64_t rows,
                                    int64_t channels) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c < channels) {
    acc_t total = 0;
    for (int64_t r = 0; r < rows; ++r) total += partial[r * channels + c];
    out[c] = total;
  }
  if (c == 0) {
    int64_t total = 0;
    for (int64_t r = 0; r < rows; ++r) total += partial_count[r];
    *count = static_cast<acc_t>(total);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void power_norm_forward_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ factor,
                                          const acc_t* __restrict__ shift, scalar_t* __restrict__ y, int64_t numel,
                                          int64_t channels) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += stride) {
    const int64_t c = i % channels;
    y[i] = static_cast<scalar_t>(static_cast<acc_t>(x[i]) * factor[c] + shift[c]);
  }
}

// grad_input and three partial rows per token block: sum over valid tokens of (corrected grad * z),
// dweight and dbias; plus the valid-token count per block.
template <typename scalar_t, typename acc_t>
__global__ void power_norm_backward_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x,
                                           const bool* __restrict__ pad, const acc_t* __restrict__ scale,
                                           const acc_t* __restrict__ weight, const acc_t* __restrict__ ema_gz,
                                           acc_t one_minus_alpha, scalar_t* __restrict__ dx,
                                           acc_t* __restrict__ partial, int64_t* __restrict__ partial_count,
                                           int64_t tokens, int64_t channels, int64_t block_tokens) {
  __shared__ acc_t scratch[kRows][kLanes];
  __shared__ int64_t count_scratch[kRows];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kLanes + threadIdx.x;
  const int64_t begin = static_cast<int64_t>(blockIdx.y) * block_tokens;
  const int64_t end = std::min(tokens, begin + block_tokens);
  const bool active = c < channels;
  const acc_t s = active ? scale[c] : acc_t(0);
  const acc_t w = active ? weight[c] : acc_t(0);
  const acc_t correction = active ? one_minus_alpha * ema_gz[c] : acc_t(0);
  acc_t gamma = 0, dw = 0, db = 0;
  int64_t valid = 0;
  for (int64_t n = begin + threadIdx.y; n < end; n += kRows) {
    const bool is_valid = pad == nullptr || !pad[n];
    valid += is_valid ? 1 : 0;
    if (!active) continue;
    const int64_t i = n * channels + c;
    const acc_t z = static_cast<acc_t>(x[i]) * s;
    const acc_t g_out = static_cast<acc_t>(dy[i]);
    const acc_t approx = g_out * w - correction * z;
    dx[i] = static_cast<scalar_t>(approx * s);
    dw += g_out * z;
    db += g_out;
    if (is_valid) gamma += approx * z;
  }
  if (threadIdx.x == 0) count_scratch[threadIdx.y] = valid;
  const int64_t row = static_cast<int64_t>(blockIdx.y) * 3 * channels;
  gamma = sum_rows(gamma, scratch);
  if (threadIdx.y == 0 && active) partial[row + c] = gamma;
  dw = sum_rows(dw, scratch);
  if (threadIdx.y == 0 && active) partial[row + channels + c] = dw;
  db = sum_rows(db, scratch);
  if (threadIdx.y == 0 && active) partial[row + 2 * channels + c] = db;
  if (blockIdx.x == 0 && threadIdx.x == 0 && threadIdx.y == 0) {
    int64_t block_count = 0;
    for (int r = 0; r < kRows; ++r) block_count += count_scratch[r];
    partial_count[blockIdx.y] = block_count;
  }
}

template <typename acc_t>
__global__ void power_norm_backward_finalize_kernel(const acc_t* __restrict__ partial,
                                                    const int64_t* __restrict__ partial_count,
                                                    acc_t* __restrict__ ema_gz, acc_t* __restrict__ grad_weight,
                                                    acc_t* __restrict__ grad_bias, int64_t rows, int64_t channels) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= channels) return;
  acc_t gamma = 0, dw = 0, db = 0;
  int64_t count = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const acc_t* p = partial + r * 3 * channels;
    gamma += p[c];
    dw += p[channels + c];
    db += p[2 * channels + c];
    count += partial_count[r];
  }
  grad_weight[c] = dw;
  grad_bias[c] = db;
  if (count > 0) ema_gz[c] += gamma / static_cast<acc_t>(count);
}

const bool* mask_ptr(const std::optional<at::Tensor>& pad_mask, at::Tensor& holder) {
  if (!pad_mask.has_value() || !pad_mask->defined()) return nullptr;
  holder = pad_mask->contiguous();
  return holder.const_data_ptr<bool>();
}

at::Tensor param_as_acc(const std::optional<at::Tensor>& p, at::ScalarType acc, int64_t channels, double fill,
                        const at::Tensor& like) {
  if (p.has_value() && p->defined()) return p->to(acc).contiguous();
  return at::full({channels}, fill, like.options().dtype(acc));
}

dim3 reduction_grid(int64_t channels, const TokenBlocks& blocks) {
  return dim3(static_cast<unsigned>((channels + kLanes - 1) / kLanes), static_cast<unsigned>(blocks.count));
}

std::tuple<at::Tensor, at::Tensor> power_norm_stats_cuda(const at::Tensor& input_in,
                                                         const std::optional<at::Tensor>& pad_mask) {
  constexpr const char* op = "norm_ext::power_norm_stats";
  const TokenShape shape = check_power_norm_input(op, input_in, pad_mask);
  TORCH_CHECK(input_in.is_cuda(), op, ": expected CUDA tensors, got input on ", input_in.device());
  const c10::cuda::CUDAGuard guard(input_in.device());
  const at::Tensor input = input_in.contiguous();
  const auto acc_type = acc_dtype_of(input);
  at::Tensor sum_sq = at::zeros({shape.channels}, input.options().dtype(acc_type));
  at::Tensor count = at::zeros({}, input.options().dtype(acc_type));
  if (shape.tokens == 0 || shape.channels == 0) return {sum_sq, count};
  at::Tensor mask_holder;
  const bool* pad = mask_ptr(pad_mask, mask_holder);
  const TokenBlocks blocks = token_blocks(shape.tokens);
  at::Tensor partial = at::empty({blocks.count, shape.channels}, input.options().dtype(acc_type));
  at::Tensor partial_count = at::empty({blocks.count}, input.options().dtype(at::kLong));
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "power_norm_stats_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    power_norm_stats_kernel<scalar_t, acc_t>
        <<<reduction_grid(shape.channels, blocks), dim3(kLanes, kRows), 0, stream>>>(
            input.const_data_ptr<scalar_t>(), pad, partial.mutable_data_ptr<acc_t>(),
            partial_count.mutable_data_ptr<int64_t>(), shape.tokens, shape.channels, blocks.size);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int threads = 256;
    sum_partials_kernel<acc_t><<<static_cast<unsigned>((shape.channels + threads - 1) / threads), threads, 0, stream>>>(
        partial.const_data_ptr<acc_t>(), partial_count.const_data_ptr<int64_t>(), sum_sq.mutable_data_ptr<acc_t>(),
        count.mutable_data_ptr<acc_t>(), blocks.count, shape.channels);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {sum_sq, count};
}

at::Tensor power_norm_cuda(const at::Tensor& input_in, const at::Tensor& scale, const std::optional<at::Tensor>& weight,
                           const std::optional<at::Tensor>& bias, const at::Tensor& ema_gz,
                           const std::optional<at::Tensor>& pad_mask, double alpha_bkw) {
  constexpr const char* op = "norm_ext::power_norm";
  const TokenShape shape = check_power_norm_input(op, input_in, pad_mask);
  check_power_norm_params(op, input_in, scale, weight, bias, ema_gz);
  TORCH_CHECK(input_in.is_cuda(), op, ": expected CUDA tensors, got input on ", input_in.device());
  const c10::cuda::CUDAGuard guard(input_in.device());
  const at::Tensor input = input_in.contiguous();
  at::Tensor out = at::empty_like(input, at::MemoryFormat::Contiguous);
  if (input.numel() == 0) return out;
  const auto acc_type = acc_dtype_of(input);
  const at::Tensor factor = (scale * param_as_acc(weight, acc_type, shape.channels, 1.0, input)).contiguous();
  const at::Tensor shift = param_as_acc(bias, acc_type, shape.channels, 0.0, input);
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int threads = 256;
  const int64_t max_blocks = static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 8;
  const auto grid = static_cast<unsigned>(std::min(max_blocks, (input.numel() + threads - 1) / threads));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "power_norm_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    power_norm_forward_kernel<scalar_t, acc_t><<<grid, threads, 0, stream>>>(
        input.const_data_ptr<scalar_t>(), factor.const_data_ptr<acc_t>(), shift.const_data_ptr<acc_t>(),
        out.mutable_data_ptr<scalar_t>(), input.numel(), shape.channels);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> power_norm_backward_cuda(
    const at::Tensor& grad_out_in, const at::Tensor& input_in, const at::Tensor& scale,
    const std::optional<at::Tensor>& weight, at::Tensor& ema_gz, const std::optional<at::Tensor>& pad_mask,
    double alpha_bkw, bool has_bias) {
  constexpr const char* op = "norm_ext::power_norm_backward";
  const TokenShape shape = check_power_norm_input(op, input_in, pad_mask);
  check_power_norm_params(op, input_in, scale, weight, std::nullopt, ema_gz);
  TORCH_CHECK(input_in.is_cuda(), op, ": expected CUDA tensors, got input on ", input_in.device());
  check_same_device(op, "grad_out", grad_out_in, input_in);
  TORCH_CHECK_VALUE(grad_out_in.sizes() == input_in.sizes(), op, ": grad_out has shape ", grad_out_in.sizes(),
                    " but input has shape ", input_in.sizes());
  TORCH_CHECK_TYPE(grad_out_in.scalar_type() == input_in.scalar_type(), op, ": grad_out dtype ",
                   grad_out_in.scalar_type(), " differs from input dtype ", input_in.scalar_type());
  TORCH_CHECK_VALUE(ema_gz.is_contiguous(), op, ": ema_gz must be contiguous");
  const c10::cuda::CUDAGuard guard(input_in.device());
  const at::Tensor input = input_in.contiguous();
  const at::Tensor grad_out = grad_out_in.contiguous();
  const auto acc_type = acc_dtype_of(input);
  const int64_t C = shape.channels;
  const bool has_weight = weight.has_value() && weight->defined();
  at::Tensor grad_input = at::empty_like(input, at::MemoryFormat::Contiguous);
  at::Tensor grad_weight_acc = at::zeros({C}, input.options().dtype(acc_type));
  at::Tensor grad_bias_acc = at::zeros({C}, input.options().dtype(acc_type));
  const auto param_type = has_weight ? weight->scalar_type() : input.scalar_type();
  const auto finish = [&]() -> std::tuple<at::Tensor, at::Tensor, at::Tensor> {
    at::Tensor gw = has_weight ? grad_weight_acc.to(param_type) : input.new_empty({0});
    at::Tensor gb = has_bias ? grad_bias_acc.to(param_type) : input.new_empty({0});
    return {grad_input, gw, gb};
  };
  if (input.numel() == 0) return finish();
  at::Tensor mask_holder;
  const bool* pad = mask_ptr(pad_mask, mask_holder);
  const at::Tensor w_acc = param_as_acc(weight, acc_type, C, 1.0, input);
  const TokenBlocks blocks = token_blocks(shape.tokens);
  at::Tensor partial = at::empty({blocks.count, 3, C}, input.options().dtype(acc_type));
  at::Tensor partial_count = at::empty({blocks.count}, input.options().dtype(at::kLong));
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "power_norm_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    power_norm_backward_kernel<scalar_t, acc_t><<<reduction_grid(C, blocks), dim3(kLanes, kRows), 0, stream>>>(
        grad_out.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(), pad, scale.const_data_ptr<acc_t>(),
        w_acc.const_data_ptr<acc_t>(), ema_gz.const_data_ptr<acc_t>(), static_cast<acc_t>(1.0 - alpha_bkw),
        grad_input.mutable_data_ptr<scalar_t>(), partial.mutable_data_ptr<acc_t>(),
        partial_count.mutable_data_ptr<int64_t>(), shape.tokens, C, blocks.size);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int threads = 256;
    power_norm_backward_finalize_kernel<acc_t>
        <<<static_cast<unsigned>((C + threads - 1) / threads), threads, 0, stream>>>(
            partial.const_data_ptr<acc_t>(), partial_count.const_data_ptr<int64_t>(), ema_gz.mutable_data_ptr<acc_t>(),
            grad_weight_acc.mutable_data_ptr<acc_t>(), grad_bias_acc.mutable_data_ptr<acc_t>(), blocks.count, C);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return finish();
}

}  // namespace
}  // namespace norm_ext

TORCH_LIBRARY_IMPL(norm_ext, CUDA, m) {
  m.impl("power_norm_stats", &norm_ext::power_norm_stats_cuda);
  m.impl("power_norm", &norm_ext::power_norm_cuda);
  m.impl("power_norm_backward", &norm_ext::power_norm_backward_cuda);
}
