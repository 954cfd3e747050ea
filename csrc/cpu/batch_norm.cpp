// CPU wrappers of the batch-norm family: per-channel statistics, the element-wise normalize, the
// backward's per-channel reduction and element-wise dx, and, for a training step with the batch's
// own statistics, each pair of those in one op (batch_norm_train and its backward). BatchNorm, SyncBatchNorm and
// MaskedBatchNorm1d are all built from these ops (see norm_ext/ops.py). The wrappers check inputs, bring them into a
// kernel layout and fold the per-channel coefficients (common/batch_norm.h); the kernels themselves are in
// batch_norm_kernel_impl.h.

#include <ATen/ATen.h>
#include <torch/library.h>

#include "common/batch_norm.h"
#include "cpu/batch_norm_kernel.h"

namespace norm_ext {
namespace {

void check_cpu(const char* op, const at::Tensor& input) {
  TORCH_CHECK(input.device().is_cpu(), op, ": expected CPU tensors, got input on ", input.device());
}

const bool* mask_ptr(const at::Tensor& mask) {
  return mask.defined() ? mask.const_data_ptr<bool>() : nullptr;
}

at::Tensor mask_or_undefined(const std::optional<at::Tensor>& pad_mask) {
  return bn_defined(pad_mask) ? pad_mask->contiguous() : at::Tensor();
}

cpu::BatchNormShape kernel_shape(const at::Tensor& input, bool cl) {
  const ChannelView v = bn_channel_view(input, cl);
  return {v.channels_last, v.outer, v.channels, v.inner};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_stats_cpu(const at::Tensor& input_,
                                                                    const std::optional<at::Tensor>& pad_mask) {
  constexpr const char* op = "batch_norm_stats";
  check_bn_input(op, input_);
  check_cpu(op, input_);
  check_pad_mask(op, pad_mask, input_);
  const bool cl = use_channels_last(input_);
  const at::Tensor input = to_bn_layout(input_, cl);
  const at::Tensor mask = mask_or_undefined(pad_mask);
  const ChannelView v = bn_channel_view(input, cl);
  const auto acc_opts = input.options().dtype(bn_acc_dtype(input.scalar_type()));
  at::Tensor mean = at::zeros({v.channels}, acc_opts);
  at::Tensor m2 = at::zeros({v.channels}, acc_opts);
  if (input.numel() > 0) {
    const at::Tensor shift = bn_channel_shift(input, mask, mean.scalar_type());
    cpu::batch_norm_stats({input.scalar_type(), kernel_shape(input, cl), input.const_data_ptr(), mask_ptr(mask),
                           shift.const_data_ptr(), mean.mutable_data_ptr(), m2.mutable_data_ptr()});
  }
  return {bn_count(input, pad_mask), mean, m2};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_train_cpu(const at::Tensor& input_,
                                                                                const std::optional<at::Tensor>& weight,
                                                                                const std::optional<at::Tensor>& bias,
                                                                                double eps) {
  constexpr const char* op = "batch_norm_train";
  check_bn_train_inputs(op, input_, weight, bias, eps);
  check_cpu(op, input_);
  const bool cl = use_channels_last(input_);
  const at::Tensor input = to_bn_layout(input_, cl);
  const ChannelView v = bn_channel_view(input, cl);
  const at::ScalarType acc = bn_acc_dtype(input.scalar_type());
  const auto acc_opts = input.options().dtype(acc);
  at::Tensor out = at::empty_like(input);
  at::Tensor mean = at::zeros({v.channels}, acc_opts);
  at::Tensor m2 = at::zeros({v.channels}, acc_opts);
  if (input.numel() == 0) return {out, mean, m2, (m2 + eps).rsqrt()};
  at::Tensor invstd = at::empty({v.channels}, acc_opts);
  const at::Tensor shift = bn_channel_shift(input, at::Tensor(), acc);
  const at::Tensor w = bn_defined(weight) ? as_acc_vector(*weight, acc) : at::Tensor();
  const at::Tensor b = bn_defined(bias) ? as_acc_vector(*bias, acc) : at::Tensor();
  cpu::batch_norm_train({input.scalar_type(), kernel_shape(input, cl), input.const_data_ptr(), shift.const_data_ptr(),
                         w.defined() ? w.const_data_ptr() : nullptr, b.defined() ? b.const_data_ptr() : nullptr, eps,
                         out.mutable_data_ptr(), mean.mutable_data_ptr(), m2.mutable_data_ptr(),
                         invstd.mutable_data_ptr()});
  return {out, mean, m2, invstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_train_backward_cpu(const at::Tensor& grad_out_,
                                                                             const at::Tensor& input_,
                                                                             const at::Tensor& mean,
                                                                             const at::Tensor& invstd,
                                                                             const std::optional<at::Tensor>& weight) {
  constexpr const char* op = "batch_norm_train_backward";
  check_bn_backward_inputs(op, grad_out_, input_, mean, invstd);
  check_cpu(op, input_);
  check_bn_affine(op, input_, weight, std::nullopt);
  const bool cl = use_channels_last(input_);
  const at::Tensor input = to_bn_layout(input_, cl);
  const at::Tensor grad_out = to_bn_layout(grad_out_, cl);
  const at::ScalarType acc = bn_acc_dtype(input.scalar_type());
  const ChannelView v = bn_channel_view(input, cl);
  at::Tensor grad_input = at::empty_like(input);
  at::Tensor sum_dy = at::zeros({v.channels}, input.options().dtype(acc));
  at::Tensor sum_dy_xhat = at::zeros_like(sum_dy);
  if (input.numel() == 0) return {grad_input, sum_dy, sum_dy_xhat};
  const at::Tensor mu = as_acc_vector(mean, acc);
  const at::Tensor inv = as_acc_vector(invstd, acc);
  const at::Tensor w = bn_defined(weight) ? as_acc_vector(*weight, acc) : at::Tensor();
  cpu::batch_norm_train_backward({input.scalar_type(), kernel_shape(input, cl), grad_out.const_data_ptr(),
                                  input.const_data_ptr(), mu.const_data_ptr(), inv.const_data_ptr(),
                                  w.defined() ? w.const_data_ptr() : nullptr, grad_input.mutable_data_ptr(),
                                  sum_dy.mutable_data_ptr(), sum_dy_xhat.mutable_data_ptr()});
  return {grad_input, sum_dy, sum_dy_xhat};
}

at::Tensor run_affine(const at::Tensor& input, const at::Tensor* grad_out, const at::Tensor& mask, bool cl,
                      const ChannelAffine& coefs) {
  at::Tensor out = at::empty_like(input);
  if (input.numel() == 0) return out;
  cpu::batch_norm_affine({input.scalar_type(), kernel_shape(input, cl), input.const_data_ptr(),
                          grad_out != nullptr ? grad_out->const_data_ptr() : nullptr, mask_ptr(mask),
                          out.mutable_data_ptr(), coefs.mean.const_data_ptr(), coefs.scale.const_data_ptr(),
                          coefs.shift.const_data_ptr(),
                          coefs.dy_scale.defined() ? coefs.dy_scale.const_data_ptr() : nullptr});
  return out;
}

at::Tensor batch_norm_elemt_cpu(const at::Tensor& input_, const at::Tensor& mean, const at::Tensor& invstd,
                                const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                                const std::optional<at::Tensor>& pad_mask) {
  constexpr const char* op = "batch_norm_elemt";
  check_bn_input(op, input_);
  check_cpu(op, input_);
  check_channel_vector(op, "mean", mean, input_);
  check_channel_vector(op, "invstd", invstd, input_);
  check_bn_affine(op, input_, weight, bias);
  check_pad_mask(op, pad_mask, input_);
  const bool cl = use_channels_last(input_);
  const at::Tensor input = to_bn_layout(input_, cl);
  const ChannelAffine coefs = forward_affine(mean, invstd, weight, bias, bn_acc_dtype(input.scalar_type()));
  return run_affine(input, nullptr, mask_or_undefined(pad_mask), cl, coefs);
}

std::tuple<at::Tensor, at::Tensor> batch_norm_backward_reduce_cpu(const at::Tensor& grad_out_, const at::Tensor& input_,
                                                                  const at::Tensor& mean_, const at::Tensor& invstd,
                                                                  const std::optional<at::Tensor>& pad_mask) {
  constexpr const char* op = "batch_norm_backward_reduce";
  check_bn_backward_inputs(op, grad_out_, input_, mean_, invstd);
  check_cpu(op, input_);
  check_pad_mask(op, pad_mask, input_);
  const bool cl = use_channels_last(input_);
  const at::Tensor input = to_bn_layout(input_, cl);
  const at::Tensor grad_out = to_bn_layout(grad_out_, cl);
  const at::Tensor mask = mask_or_undefined(pad_mask);
  const at::ScalarType acc = bn_acc_dtype(input.scalar_type());
  const at::Tensor mean = as_acc_vector(mean_, acc);
  const ChannelView v = bn_channel_view(input, cl);
  at::Tensor sum_dy = at::zeros({v.channels}, input.options().dtype(acc));
  at::Tensor sum_dy_xmu = at::zeros_like(sum_dy);
  if (input.numel() > 0) {
    cpu::batch_norm_backward_reduce({input.scalar_type(), kernel_shape(input, cl), grad_out.const_data_ptr(),
                                     input.const_data_ptr(), mask_ptr(mask), mean.const_data_ptr(),
                                     sum_dy.mutable_data_ptr(), sum_dy_xmu.mutable_data_ptr()});
  }
  return {sum_dy, sum_dy_xmu * invstd.to(acc)};
}

at::Tensor batch_norm_backward_elemt_cpu(const at::Tensor& grad_out_, const at::Tensor& input_, const at::Tensor& mean,
                                         const at::Tensor& invstd, const std::optional<at::Tensor>& weight,
                                         const std::optional<at::Tensor>& mean_dy,
                                         const std::optional<at::Tensor>& mean_dy_xhat,
                                         const std::optional<at::Tensor>& pad_mask) {
  constexpr const char* op = "batch_norm_backward_elemt";
  check_bn_backward_inputs(op, grad_out_, input_, mean, invstd);
  check_cpu(op, input_);
  if (bn_defined(mean_dy)) check_channel_vector(op, "mean_dy", *mean_dy, input_);
  if (bn_defined(mean_dy_xhat)) check_channel_vector(op, "mean_dy_xhat", *mean_dy_xhat, input_);
  check_bn_affine(op, input_, weight, std::nullopt);
  check_pad_mask(op, pad_mask, input_);
  const bool cl = use_channels_last(input_);
  const at::Tensor input = to_bn_layout(input_, cl);
  const at::Tensor grad_out = to_bn_layout(grad_out_, cl);
  const ChannelAffine coefs =
      backward_affine(mean, invstd, weight, mean_dy, mean_dy_xhat, bn_acc_dtype(input.scalar_type()));
  return run_affine(input, &grad_out, mask_or_undefined(pad_mask), cl, coefs);
}

}  // namespace
}  // namespace norm_ext

TORCH_LIBRARY_IMPL(norm_ext, CPU, m) {
  m.impl("batch_norm_stats", &norm_ext::batch_norm_stats_cpu);
  m.impl("batch_norm_train", &norm_ext::batch_norm_train_cpu);
  m.impl("batch_norm_train_backward", &norm_ext::batch_norm_train_backward_cpu);
  m.impl("batch_norm_elemt", &norm_ext::batch_norm_elemt_cpu);
  m.impl("batch_norm_backward_reduce", &norm_ext::batch_norm_backward_reduce_cpu);
  m.impl("batch_norm_backward_elemt", &norm_ext::batch_norm_backward_elemt_cpu);
}
