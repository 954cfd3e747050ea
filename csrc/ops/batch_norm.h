#pragma once
// Op glue of the batch-norm family (BatchNorm, SyncBatchNorm and MaskedBatchNorm1d are all built from
// these ops, see norm_ext/ops.py), shared by every backend: checks, the kernel layout, allocation,
// the per-channel coefficients (common/batch_norm.h) and empty inputs. A backend supplies:
//
//   struct Backend {
//     static constexpr c10::DeviceType kDevice;
//     using Guard = ...;
//     static void stats(const BnStatsCall&);              // per-channel mean and m2
//     static void affine(const BnAffineCall&);            // the element-wise map of common/batch_norm.h
//     static void backward_reduce(const BnReduceCall&);   // per-channel sum(dy), sum(dy * (x - mean))
//     // A backend that finishes a channel while it is in cache (the CPU) also fuses each training
//     // step's two passes; the others compose them from the ops above.
//     static constexpr bool kFusedTrain;
//     static void train(const BnTrainCall&);                   // when kFusedTrain
//     static void train_backward(const BnTrainBackwardCall&);  // when kFusedTrain
//   };

#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "common/batch_norm.h"
#include "ops/common.h"

namespace norm_ext {

// Tensors are in the kernel layout (channels-first contiguous, or channels-last dense); per-channel
// vectors are contiguous in the accumulation type. mask is undefined without padding.
struct BnStatsCall {
  const at::Tensor& input;
  const at::Tensor& mask;
  const at::Tensor& shift;
  const at::Tensor& mean;
  const at::Tensor& m2;
  bool channels_last;
};

struct BnAffineCall {
  const at::Tensor& input;
  const at::Tensor& grad_out;  // undefined in the forward
  const at::Tensor& mask;
  const at::Tensor& out;
  const ChannelAffine& coefs;
  bool channels_last;
};

struct BnReduceCall {
  const at::Tensor& grad_out;
  const at::Tensor& input;
  const at::Tensor& mask;
  const at::Tensor& mean;
  const at::Tensor& sum_dy;
  const at::Tensor& sum_dy_xmu;
  bool channels_last;
};

// The backend takes the statistics' shift (bn_channel_shift) from the input itself.
struct BnTrainCall {
  const at::Tensor& input;
  const at::Tensor& weight;  // undefined: 1
  const at::Tensor& bias;    // undefined: 0
  double eps;
  const at::Tensor& out;
  const at::Tensor& mean;
  const at::Tensor& m2;
  const at::Tensor& invstd;
  bool channels_last;
};

struct BnTrainBackwardCall {
  const at::Tensor& grad_out;
  const at::Tensor& input;
  const at::Tensor& mean;
  const at::Tensor& invstd;
  const at::Tensor& weight;  // undefined: 1
  const at::Tensor& grad_input;
  const at::Tensor& sum_dy;
  const at::Tensor& sum_dy_xhat;
  bool channels_last;
};

template <typename Backend>
struct BatchNormOps {
  static at::Tensor mask_or_undefined(const std::optional<at::Tensor>& pad_mask) {
    return bn_defined(pad_mask) ? pad_mask->contiguous() : at::Tensor();
  }

  static at::Tensor run_affine(const at::Tensor& input, const at::Tensor& grad_out, const at::Tensor& mask, bool cl,
                               const ChannelAffine& coefs) {
    at::Tensor out = at::empty_like(input);
    if (input.numel() > 0) Backend::affine({input, grad_out, mask, out, coefs, cl});
    return out;
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor> stats(const at::Tensor& input_,
                                                              const std::optional<at::Tensor>& pad_mask) {
    constexpr const char* op = "batch_norm_stats";
    check_bn_input(op, input_);
    check_device_type(op, input_, Backend::kDevice);
    check_pad_mask(op, pad_mask, input_);
    const typename Backend::Guard guard(input_.device());
    const bool cl = use_channels_last(input_);
    const at::Tensor input = to_bn_layout(input_, cl);
    const at::Tensor mask = mask_or_undefined(pad_mask);
    const auto acc_opts = input.options().dtype(bn_acc_dtype(input.scalar_type()));
    at::Tensor mean = at::zeros({input.size(1)}, acc_opts);
    at::Tensor m2 = at::zeros({input.size(1)}, acc_opts);
    if (input.numel() > 0) {
      const at::Tensor shift = bn_channel_shift(input, mask, mean.scalar_type());
      Backend::stats({input, mask, shift, mean, m2, cl});
    }
    return {bn_count(input, pad_mask), mean, m2};
  }

  static at::Tensor elemt(const at::Tensor& input_, const at::Tensor& mean, const at::Tensor& invstd,
                          const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                          const std::optional<at::Tensor>& pad_mask) {
    constexpr const char* op = "batch_norm_elemt";
    check_bn_input(op, input_);
    check_device_type(op, input_, Backend::kDevice);
    check_channel_vector(op, "mean", mean, input_);
    check_channel_vector(op, "invstd", invstd, input_);
    check_bn_affine(op, input_, weight, bias);
    check_pad_mask(op, pad_mask, input_);
    const typename Backend::Guard guard(input_.device());
    const bool cl = use_channels_last(input_);
    const at::Tensor input = to_bn_layout(input_, cl);
    const ChannelAffine coefs = forward_affine(mean, invstd, weight, bias, bn_acc_dtype(input.scalar_type()));
    return run_affine(input, at::Tensor(), mask_or_undefined(pad_mask), cl, coefs);
  }

  static std::tuple<at::Tensor, at::Tensor> backward_reduce(const at::Tensor& grad_out_, const at::Tensor& input_,
                                                            const at::Tensor& mean_, const at::Tensor& invstd,
                                                            const std::optional<at::Tensor>& pad_mask) {
    constexpr const char* op = "batch_norm_backward_reduce";
    check_bn_backward_inputs(op, grad_out_, input_, mean_, invstd);
    check_device_type(op, input_, Backend::kDevice);
    check_pad_mask(op, pad_mask, input_);
    const typename Backend::Guard guard(input_.device());
    const bool cl = use_channels_last(input_);
    const at::Tensor input = to_bn_layout(input_, cl);
    const at::Tensor grad_out = to_bn_layout(grad_out_, cl);
    const at::ScalarType acc = bn_acc_dtype(input.scalar_type());
    const at::Tensor mean = as_acc_vector(mean_, acc);
    at::Tensor sum_dy = at::zeros({input.size(1)}, input.options().dtype(acc));
    at::Tensor sum_dy_xmu = at::zeros_like(sum_dy);
    if (input.numel() > 0) {
      Backend::backward_reduce({grad_out, input, mask_or_undefined(pad_mask), mean, sum_dy, sum_dy_xmu, cl});
    }
    return {sum_dy, sum_dy_xmu * as_dtype(invstd, acc)};
  }

  static at::Tensor backward_elemt(const at::Tensor& grad_out_, const at::Tensor& input_, const at::Tensor& mean,
                                   const at::Tensor& invstd, const std::optional<at::Tensor>& weight,
                                   const std::optional<at::Tensor>& mean_dy,
                                   const std::optional<at::Tensor>& mean_dy_xhat,
                                   const std::optional<at::Tensor>& pad_mask) {
    constexpr const char* op = "batch_norm_backward_elemt";
    check_bn_backward_inputs(op, grad_out_, input_, mean, invstd);
    check_device_type(op, input_, Backend::kDevice);
    if (bn_defined(mean_dy)) check_channel_vector(op, "mean_dy", *mean_dy, input_);
    if (bn_defined(mean_dy_xhat)) check_channel_vector(op, "mean_dy_xhat", *mean_dy_xhat, input_);
    check_bn_affine(op, input_, weight, std::nullopt);
    check_pad_mask(op, pad_mask, input_);
    const typename Backend::Guard guard(input_.device());
    const bool cl = use_channels_last(input_);
    const at::Tensor input = to_bn_layout(input_, cl);
    const at::Tensor grad_out = to_bn_layout(grad_out_, cl);
    const ChannelAffine coefs =
        backward_affine(mean, invstd, weight, mean_dy, mean_dy_xhat, bn_acc_dtype(input.scalar_type()));
    return run_affine(input, grad_out, mask_or_undefined(pad_mask), cl, coefs);
  }

  // A training forward that merges no statistics across ranks: invstd = 1 / sqrt(m2 / count + eps),
  // and the running statistics, when given, updated from this batch's.
  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> train(
      const at::Tensor& input_, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
      double eps, const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var,
      double momentum) {
    constexpr const char* op = "batch_norm_train";
    check_bn_train_inputs(op, input_, weight, bias, eps);
    check_running_stat(op, "running_mean", running_mean, input_);
    check_running_stat(op, "running_var", running_var, input_);
    check_momentum(op, momentum);
    check_device_type(op, input_, Backend::kDevice);
    const typename Backend::Guard guard(input_.device());
    auto result = train_batch(input_, weight, bias, eps);
    const int64_t count = input_.numel() / std::max<int64_t>(input_.size(1), 1);
    update_running_stats(running_mean, running_var, std::get<1>(result), std::get<2>(result), count, momentum);
    return result;
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> train_batch(const at::Tensor& input_,
                                                                                const std::optional<at::Tensor>& weight,
                                                                                const std::optional<at::Tensor>& bias,
                                                                                double eps) {
    if constexpr (!Backend::kFusedTrain) {
      const auto [count, mean, m2] = stats(input_, std::nullopt);
      const at::Tensor invstd = (m2 / count.clamp_min(1) + eps).rsqrt();
      return {elemt(input_, mean, invstd, weight, bias, std::nullopt), mean, m2, invstd};
    } else {
      const bool cl = use_channels_last(input_);
      const at::Tensor input = to_bn_layout(input_, cl);
      const at::ScalarType acc = bn_acc_dtype(input.scalar_type());
      const auto acc_opts = input.options().dtype(acc);
      at::Tensor out = at::empty_like(input);
      if (input.numel() == 0) {
        const at::Tensor zeros = at::zeros({input.size(1)}, acc_opts);
        return {out, zeros, zeros.clone(), (zeros + eps).rsqrt()};
      }
      at::Tensor mean = at::empty({input.size(1)}, acc_opts);
      at::Tensor m2 = at::empty({input.size(1)}, acc_opts);
      at::Tensor invstd = at::empty({input.size(1)}, acc_opts);
      const at::Tensor w = bn_defined(weight) ? as_acc_vector(*weight, acc) : at::Tensor();
      const at::Tensor b = bn_defined(bias) ? as_acc_vector(*bias, acc) : at::Tensor();
      Backend::train({input, w, b, eps, out, mean, m2, invstd, cl});
      return {out, mean, m2, invstd};
    }
  }

  // The backward of train, the means taken over this input's count: dx, sum(dy), sum(dy * x_hat).
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> train_backward(const at::Tensor& grad_out_,
                                                                       const at::Tensor& input_, const at::Tensor& mean,
                                                                       const at::Tensor& invstd,
                                                                       const std::optional<at::Tensor>& weight) {
    constexpr const char* op = "batch_norm_train_backward";
    check_bn_backward_inputs(op, grad_out_, input_, mean, invstd);
    check_device_type(op, input_, Backend::kDevice);
    check_bn_affine(op, input_, weight, std::nullopt);
    const typename Backend::Guard guard(input_.device());
    if constexpr (!Backend::kFusedTrain) {
      const auto [sum_dy, sum_dy_xhat] = backward_reduce(grad_out_, input_, mean, invstd, std::nullopt);
      const double count =
          static_cast<double>(std::max<int64_t>(1, input_.numel() / std::max<int64_t>(input_.size(1), 1)));
      const at::Tensor grad_input =
          backward_elemt(grad_out_, input_, mean, invstd, weight, sum_dy / count, sum_dy_xhat / count, std::nullopt);
      return {grad_input, sum_dy, sum_dy_xhat};
    } else {
      const bool cl = use_channels_last(input_);
      const at::Tensor input = to_bn_layout(input_, cl);
      const at::Tensor grad_out = to_bn_layout(grad_out_, cl);
      const at::ScalarType acc = bn_acc_dtype(input.scalar_type());
      at::Tensor grad_input = at::empty_like(input);
      at::Tensor sum_dy = at::zeros({input.size(1)}, input.options().dtype(acc));
      at::Tensor sum_dy_xhat = at::zeros_like(sum_dy);
      if (input.numel() == 0) return {grad_input, sum_dy, sum_dy_xhat};
      const at::Tensor mu = as_acc_vector(mean, acc);
      const at::Tensor inv = as_acc_vector(invstd, acc);
      const at::Tensor w = bn_defined(weight) ? as_acc_vector(*weight, acc) : at::Tensor();
      Backend::train_backward({grad_out, input, mu, inv, w, grad_input, sum_dy, sum_dy_xhat, cl});
      return {grad_input, sum_dy, sum_dy_xhat};
    }
  }
};

template <typename Backend>
void register_batch_norm_ops(torch::Library& m) {
  using Ops = BatchNormOps<Backend>;
  m.impl("batch_norm_stats", &Ops::stats);
  m.impl("batch_norm_train", &Ops::train);
  m.impl("batch_norm_train_backward", &Ops::train_backward);
  m.impl("batch_norm_elemt", &Ops::elemt);
  m.impl("batch_norm_backward_reduce", &Ops::backward_reduce);
  m.impl("batch_norm_backward_elemt", &Ops::backward_elemt);
}

}  // namespace norm_ext
