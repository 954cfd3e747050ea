#pragma once
// Host-side helpers shared by the CPU and CUDA batch-norm wrappers: input checks, the choice of
// memory layout, and the per-channel coefficients of the one element-wise kernel.
//
// The kernels see one of two layouts: channels-first, [N][C][inner] (contiguous NCHW, NCL, NCDHW),
// or channels-last, [rows][C] (channels_last, channels_last_3d, and every (N, C) input). Any other
// strides are made contiguous first.
//
// Forward and backward element-wise passes are the same per-channel map,
//   out = (x - mean[c]) * scale[c] + shift[c] + dy_scale[c] * dy,
// with dy absent in the forward. Folding weight, invstd and the backward's means into these four
// vectors here keeps every kernel free of optional-parameter branches. x - mean is formed before
// scaling so that a large channel offset (mean 1e4, std 1e-2) does not cancel in fp32.

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <optional>

#include "checks.h"
#include "dtype.h"

namespace norm_ext {

inline at::ScalarType bn_acc_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline bool bn_defined(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined();
}

struct ChannelView {
  bool channels_last;
  int64_t outer;  // channels-first: N; channels-last: rows = numel / C
  int64_t channels;
  int64_t inner;  // channels-first: prod(spatial); channels-last: 1
};

// t.movedim(1, -1).is_contiguous(), read from the strides: the view costs a few microseconds, and
// the ops ask on every call.
inline bool is_channels_last_dense(const at::Tensor& t) {
  if (t.numel() == 0) return true;
  int64_t expected = 1;
  const auto dense = [&](int64_t d) {
    const int64_t size = t.size(d);
    if (size == 1) return true;
    if (t.stride(d) != expected) return false;
    expected *= size;
    return true;
  };
  if (!dense(1)) return false;
  for (int64_t d = t.dim() - 1; d >= 2; --d) {
    if (!dense(d)) return false;
  }
  return dense(0);
}

// (N, C) input is always read as rows (the pad mask indexes rows); higher-rank input keeps a
// channels-last layout when it has one and is made contiguous otherwise.
inline bool use_channels_last(const at::Tensor& input) {
  return input.dim() == 2 || is_channels_last_dense(input);
}

// Brings `t` into the layout the kernels read: channels-last dense, or contiguous.
inline at::Tensor to_bn_layout(const at::Tensor& t, bool channels_last) {
  if (channels_last) {
    return is_channels_last_dense(t) ? t : t.movedim(1, -1).contiguous().movedim(-1, 1);
  }
  return t.contiguous();
}

inline ChannelView bn_channel_view(const at::Tensor& input, bool channels_last) {
  const int64_t n = input.size(0);
  const int64_t c = input.size(1);
  int64_t inner = 1;
  for (int64_t d = 2; d < input.dim(); ++d) inner *= input.size(d);
  if (channels_last) return {true, n * inner, c, 1};
  return {false, n, c, inner};
}

inline void check_bn_input(const char* op, const at::Tensor& input) {
  check_input_dtype(op, input);
  TORCH_CHECK_VALUE(input.dim() >= 2, op, ": input must have shape (N, C, *) with at least 2 dimensions, got ",
                    input.sizes());
}

// mean / invstd / the backward's per-channel means: (C,) floating tensors on the input's device.
inline void check_channel_vector(const char* op, const char* name, const at::Tensor& t, const at::Tensor& input) {
  check_same_device(op, name, t, input);
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == input.size(1), op, ": ", name, " must have shape [", input.size(1),
                    "] (one value per channel of the input), got ", t.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), op, ": ", name, " must be a floating tensor, got ",
                   t.scalar_type());
}

// BatchNorm parameters are float32 or the input's dtype; unlike the row norms, float32 parameters
// with float64 input are accepted too, since modules keep float32 parameters by default.
inline void check_bn_param(const char* op, const char* name, const at::Tensor& p, const at::Tensor& input) {
  check_same_device(op, name, p, input);
  TORCH_CHECK_VALUE(p.dim() == 1 && p.size(0) == input.size(1), op, ": ", name, " must have shape [", input.size(1),
                    "] (one value per channel of the input), got ", p.sizes());
  TORCH_CHECK_TYPE(p.scalar_type() == input.scalar_type() || p.scalar_type() == at::kFloat, op, ": ", name,
                   " must have the input's dtype (", input.scalar_type(), ") or float32, got ", p.scalar_type());
}

inline void check_bn_affine(const char* op, const at::Tensor& input, const std::optional<at::Tensor>& weight,
                            const std::optional<at::Tensor>& bias) {
  if (bn_defined(weight)) check_bn_param(op, "weight", *weight, input);
  if (bn_defined(bias)) check_bn_param(op, "bias", *bias, input);
}

inline void check_pad_mask(const char* op, const std::optional<at::Tensor>& pad_mask, const at::Tensor& input) {
  if (!bn_defined(pad_mask)) return;
  check_same_device(op, "pad_mask", *pad_mask, input);
  TORCH_CHECK_VALUE(input.dim() == 2, op, ": pad_mask needs an (N, C) input, got an input of shape ", input.sizes());
  TORCH_CHECK_TYPE(pad_mask->scalar_type() == at::kBool, op, ": pad_mask must be a bool tensor, got ",
                   pad_mask->scalar_type());
  TORCH_CHECK_VALUE(pad_mask->dim() == 1 && pad_mask->size(0) == input.size(0), op, ": pad_mask must have shape [",
                    input.size(0), "] (one flag per row of the input), got ", pad_mask->sizes());
}

inline void check_grad_out(const char* op, const at::Tensor& grad_out, const at::Tensor& input) {
  check_same_device(op, "grad_out", grad_out, input);
  TORCH_CHECK_VALUE(grad_out.sizes() == input.sizes(), op, ": grad_out has shape ", grad_out.sizes(),
                    " but input has shape ", input.sizes());
  TORCH_CHECK_TYPE(grad_out.scalar_type() == input.scalar_type(), op, ": grad_out dtype ", grad_out.scalar_type(),
                   " differs from the input's ", input.scalar_type());
}

// What batch_norm_train checks: the input, its affine parameters and eps.
inline void check_bn_train_inputs(const char* op, const at::Tensor& input, const std::optional<at::Tensor>& weight,
                                  const std::optional<at::Tensor>& bias, double eps) {
  check_bn_input(op, input);
  check_bn_affine(op, input, weight, bias);
  check_eps(op, eps);
}

// batch_norm_train's running statistics: per-channel float vectors on the input's device that it
// writes, so no two of their elements may share memory.
inline void check_running_stat(const char* op, const char* name, const std::optional<at::Tensor>& t,
                               const at::Tensor& input) {
  if (!bn_defined(t)) return;
  check_channel_vector(op, name, *t, input);
  check_writable(op, name, *t);
}

inline void check_momentum(const char* op, double momentum) {
  TORCH_CHECK_VALUE(momentum >= 0.0 && momentum <= 1.0, op, ": momentum must be in [0, 1], got ", momentum);
}

// running += momentum * (batch - running), the variance unbiased, as torch updates them; a batch of
// no values leaves them unchanged.
inline void update_running_stats(const std::optional<at::Tensor>& running_mean,
                                 const std::optional<at::Tensor>& running_var, const at::Tensor& mean,
                                 const at::Tensor& m2, int64_t count, double momentum) {
  if (count == 0) return;
  if (bn_defined(running_mean)) running_mean->lerp_(as_dtype(mean, running_mean->scalar_type()), momentum);
  if (bn_defined(running_var)) {
    // (1 - momentum) * running + momentum / (count - 1) * m2 in two in-place adds (dividing m2 first
    // would allocate the quotient, a scalar multiply wraps its factor in a tensor). The sum is taken
    // in m2's precision before it is rounded to the buffer's: an fp16 buffer cannot hold m2 of a
    // large batch.
    const double unbias = 1.0 / static_cast<double>(std::max<int64_t>(count - 1, 1));
    running_var->add_(*running_var, -momentum).add_(m2, momentum * unbias);
  }
}

// What every backward op checks: the input, a grad_out of its shape and dtype, and the forward's
// per-channel mean and invstd.
inline void check_bn_backward_inputs(const char* op, const at::Tensor& grad_out, const at::Tensor& input,
                                     const at::Tensor& mean, const at::Tensor& invstd) {
  check_bn_input(op, input);
  check_grad_out(op, grad_out, input);
  check_channel_vector(op, "mean", mean, input);
  check_channel_vector(op, "invstd", invstd, input);
}

struct ChannelAffine {
  at::Tensor mean;
  at::Tensor scale;
  at::Tensor shift;
  at::Tensor dy_scale;  // undefined in the forward
};

inline at::Tensor as_acc_vector(const at::Tensor& t, at::ScalarType acc) {
  return as_dtype(t, acc).contiguous();
}

inline ChannelAffine forward_affine(const at::Tensor& mean, const at::Tensor& invstd,
                                    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                                    at::ScalarType acc) {
  at::Tensor scale = as_acc_vector(invstd, acc);
  if (bn_defined(weight)) scale = scale * as_dtype(*weight, acc);
  const at::Tensor shift = bn_defined(bias) ? as_acc_vector(*bias, acc) : at::zeros_like(scale);
  return {as_acc_vector(mean, acc), scale.contiguous(), shift, at::Tensor()};
}

// dx = a * (dy - mean_dy - x_hat * mean_dy_xhat), a = weight * invstd, x_hat = (x - mean) * invstd.
inline ChannelAffine backward_affine(const at::Tensor& mean, const at::Tensor& invstd,
                                     const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& mean_dy,
                                     const std::optional<at::Tensor>& mean_dy_xhat, at::ScalarType acc) {
  const at::Tensor inv = as_acc_vector(invstd, acc);
  at::Tensor a = bn_defined(weight) ? inv * as_dtype(*weight, acc) : inv.clone();
  at::Tensor scale = bn_defined(mean_dy_xhat) ? -(a * inv * as_dtype(*mean_dy_xhat, acc)) : at::zeros_like(a);
  at::Tensor shift = bn_defined(mean_dy) ? -(a * as_dtype(*mean_dy, acc)) : at::zeros_like(a);
  return {as_acc_vector(mean, acc), scale.contiguous(), shift.contiguous(), a.contiguous()};
}

// One sample value per channel (the first valid row's), subtracted before any statistics are
// accumulated. Means and merges then work on values of the order of the spread rather than of the
// offset: a channel with mean 1e4 and std 1e-2 has a mean whose fp32 ulp (1e-3) would otherwise
// enter every Chan merge's delta^2 term. Found by device ops (argmax over the mask), so no host sync.
inline at::Tensor bn_channel_shift(const at::Tensor& input, const at::Tensor& pad_mask, at::ScalarType acc) {
  if (pad_mask.defined()) {
    // With every row padding, argmax points at a padding row; its values (NaN, inf) must not become
    // the shift that the empty statistics are reported relative to, so the shift is then 0.
    const at::Tensor valid = pad_mask.logical_not();
    const at::Tensor first_valid = valid.to(at::kInt).argmax().reshape({1});
    const at::Tensor row = input.index_select(0, first_valid).reshape({input.size(1)}).to(acc);
    return at::where(valid.any(), row, at::zeros_like(row)).contiguous();
  }
  at::Tensor sample = input.select(0, 0);
  while (sample.dim() > 1) sample = sample.select(1, 0);
  return as_acc_vector(sample, acc);
}

// The number of statistics-bearing elements per channel, as an int64 scalar tensor. With a mask it
// is counted on the device, so no host synchronisation happens.
inline at::Tensor bn_count(const at::Tensor& input, const std::optional<at::Tensor>& pad_mask) {
  const auto opts = input.options().dtype(at::kLong);
  if (bn_defined(pad_mask)) return pad_mask->logical_not().sum(at::kLong);
  return at::scalar_tensor(input.numel() / std::max<int64_t>(input.size(1), 1), opts);
}

}  // namespace norm_ext
