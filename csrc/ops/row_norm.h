#pragma once
// Op glue of the row norms (layer_norm, rms_norm, add_layer_norm, add_rms_norm and their backward
// ops), shared by every backend: input checks, the device check, output allocation and shapes, the
// empty-input results, and registration. A backend supplies its device type, a device guard and two
// functions that compute into the allocated outputs:
//
//   struct Backend {
//     static constexpr c10::DeviceType kDevice;
//     using Guard = ...;                         // constructed from the input's device
//     static void forward(const RowNormFwdCall&);
//     static void backward(const RowNormBwdCall&);
//   };
//
// csrc/cpu/layer_norm.cpp is the CPU backend; csrc/cuda/row_norm.cuh the GPU one, compiled for CUDA
// and for the SIMT host build.

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "ops/common.h"

namespace norm_ext {

// The row norms' tensors once checked, made contiguous and allocated. Undefined tensors are absent
// operands: residual (plain ops), mean (RMSNorm), weight, bias.
struct RowNormFwdCall {
  const at::Tensor& input;
  const at::Tensor& residual;  // already in the residual stream's dtype
  const at::Tensor& residual_out;
  const at::Tensor& out;
  const at::Tensor& mean;
  const at::Tensor& rstd;
  const at::Tensor& weight;
  const at::Tensor& bias;
  RowShape shape;
  double eps;
  bool zero_centered;
  bool rms;
};

// grad_weight / grad_bias are allocated in the parameters' dtype where wanted (undefined otherwise).
// bias is defined only when the backward reads it: saved is the output (memory-efficient mode).
struct RowNormBwdCall {
  const at::Tensor& grad_out;
  const at::Tensor& saved;
  const at::Tensor& grad_residual;
  const at::Tensor& mean;  // undefined for RMSNorm and when saved is the output
  const at::Tensor& rstd;
  const at::Tensor& weight;
  const at::Tensor& bias;
  const at::Tensor& grad_input;
  const at::Tensor& grad_weight;
  const at::Tensor& grad_bias;
  RowShape shape;
  bool zero_centered;
  bool saved_is_output;
  bool rms;
};

// A float32 residual summed into a narrower stream must be rounded once, after the add; the fused
// kernels read the residual in the stream's dtype, which would round it twice. This mix is rare, so
// the glue computes h unfused for it and normalises h with the plain kernel.
inline bool add_norm_needs_unfused_sum(const at::Tensor& residual, at::ScalarType h_dtype) {
  return residual.scalar_type() == at::kFloat && h_dtype != at::kFloat;
}

// Forward: (op name, input, residual or null, residual_dtype, ...) -> {out, [residual_out], [mean], rstd}.
template <typename Backend>
std::vector<at::Tensor> row_norm_forward(const char* op, const at::Tensor& input_, const at::Tensor* residual_,
                                         std::optional<at::ScalarType> residual_dtype, at::IntArrayRef normalized_shape,
                                         const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                                         double eps, bool zero_centered, bool rms) {
  const RowShape shape = check_row_norm_inputs(op, input_, normalized_shape, weight, bias, eps);
  check_device_type(op, input_, Backend::kDevice);
  at::ScalarType h_dtype = input_.scalar_type();
  if (residual_ != nullptr) h_dtype = check_add_norm_inputs(op, input_, *residual_, residual_dtype);
  if (residual_ != nullptr && add_norm_needs_unfused_sum(*residual_, h_dtype)) {
    const at::Tensor h = (input_.to(at::kFloat) + *residual_).to(h_dtype);
    auto result = row_norm_forward<Backend>(op, h, nullptr, std::nullopt, normalized_shape, weight, bias, eps,
                                            zero_centered, rms);
    result.insert(result.begin() + 1, h);
    return result;
  }

  const typename Backend::Guard guard(input_.device());
  const at::Tensor input = input_.contiguous();
  const std::vector<int64_t> stat_shape = row_stat_shape(input, static_cast<int64_t>(normalized_shape.size()));
  const auto stat_opts = input.options().dtype(stat_dtype(input.scalar_type()));
  const at::Tensor out = at::empty(input.sizes(), input.options());
  const at::Tensor mean = rms ? at::Tensor() : at::empty(stat_shape, stat_opts);
  const at::Tensor rstd = at::empty(stat_shape, stat_opts);
  at::Tensor residual;
  at::Tensor residual_out;
  if (residual_ != nullptr) {
    // A residual in another dtype than h is rounded to h's dtype first: the kernels read a single
    // residual-stream dtype.
    residual = residual_->to(h_dtype).contiguous();
    residual_out = at::empty(input.sizes(), input.options().dtype(h_dtype));
  }
  if (shape.rows * shape.cols != 0) {
    Backend::forward({input, residual, residual_out, out, mean, rstd, contiguous_or_undefined(weight),
                      contiguous_or_undefined(bias), shape, eps, zero_centered, rms});
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

// Backward: -> {grad_input, grad_weight, [grad_bias]}; an absent parameter's gradient is empty.
template <typename Backend>
std::vector<at::Tensor> row_norm_backward(const char* op, const at::Tensor& grad_out_, const at::Tensor& saved_,
                                          at::IntArrayRef normalized_shape, const at::Tensor* mean_,
                                          const at::Tensor& rstd_, const std::optional<at::Tensor>& weight,
                                          const std::optional<at::Tensor>& bias, bool zero_centered,
                                          bool saved_is_output, const std::optional<at::Tensor>& grad_residual,
                                          bool rms) {
  const bool use_mean = !rms && !saved_is_output;
  const RowShape shape = check_row_norm_backward_inputs(op, grad_out_, saved_, normalized_shape,
                                                        use_mean ? mean_ : nullptr, rstd_, weight, bias, grad_residual);
  check_device_type(op, grad_out_, Backend::kDevice);

  const typename Backend::Guard guard(grad_out_.device());
  const at::Tensor grad_out = grad_out_.contiguous();
  const at::Tensor saved = saved_.contiguous();
  const at::Tensor w = contiguous_or_undefined(weight);
  const at::Tensor b = contiguous_or_undefined(bias);
  const at::Tensor grad_input = at::empty(saved.sizes(), saved.options());
  const bool empty = shape.rows * shape.cols == 0;
  const auto make_grad = [&](const at::Tensor& p) {
    if (!p.defined()) return at::Tensor();
    return empty ? at::zeros(normalized_shape, p.options()) : at::empty(normalized_shape, p.options());
  };
  const at::Tensor grad_weight = make_grad(w);
  const at::Tensor grad_bias = make_grad(b);
  if (!empty) {
    Backend::backward({grad_out, saved, contiguous_or_undefined(grad_residual),
                       use_mean ? mean_->contiguous() : at::Tensor(), rstd_.contiguous(), w,
                       saved_is_output ? b : at::Tensor(), grad_input, grad_weight, grad_bias, shape, zero_centered,
                       saved_is_output, rms});
  }
  const at::Tensor none = at::empty({0}, grad_out.options());
  std::vector<at::Tensor> result{grad_input, grad_weight.defined() ? grad_weight : none};
  if (!rms) result.push_back(grad_bias.defined() ? grad_bias : none);
  return result;
}

// The six ops of the schema as a backend's functions. memory_efficient only steers the autograd
// formula (Python side); the kernels ignore it.
template <typename Backend>
struct RowNormOps {
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm(const at::Tensor& input,
                                                                   at::IntArrayRef normalized_shape,
                                                                   const std::optional<at::Tensor>& weight,
                                                                   const std::optional<at::Tensor>& bias, double eps,
                                                                   bool zero_centered_weight, bool) {
    auto r = row_norm_forward<Backend>("layer_norm", input, nullptr, std::nullopt, normalized_shape, weight, bias, eps,
                                       zero_centered_weight, false);
    return {r[0], r[1], r[2]};
  }

  static std::tuple<at::Tensor, at::Tensor> rms_norm(const at::Tensor& input, at::IntArrayRef normalized_shape,
                                                     const std::optional<at::Tensor>& weight, double eps,
                                                     bool zero_centered_weight, bool) {
    auto r = row_norm_forward<Backend>("rms_norm", input, nullptr, std::nullopt, normalized_shape, weight, std::nullopt,
                                       eps, zero_centered_weight, true);
    return {r[0], r[1]};
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_layer_norm(
      const at::Tensor& input, const at::Tensor& residual, at::IntArrayRef normalized_shape,
      const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double eps,
      std::optional<at::ScalarType> residual_dtype, bool zero_centered_weight, bool) {
    auto r = row_norm_forward<Backend>("add_layer_norm", input, &residual, residual_dtype, normalized_shape, weight,
                                       bias, eps, zero_centered_weight, false);
    return {r[0], r[1], r[2], r[3]};
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor> add_rms_norm(
      const at::Tensor& input, const at::Tensor& residual, at::IntArrayRef normalized_shape,
      const std::optional<at::Tensor>& weight, double eps, std::optional<at::ScalarType> residual_dtype,
      bool zero_centered_weight, bool) {
    auto r = row_norm_forward<Backend>("add_rms_norm", input, &residual, residual_dtype, normalized_shape, weight,
                                       std::nullopt, eps, zero_centered_weight, true);
    return {r[0], r[1], r[2]};
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_backward(
      const at::Tensor& grad_out, const at::Tensor& saved, at::IntArrayRef normalized_shape, const at::Tensor& mean,
      const at::Tensor& rstd, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
      bool zero_centered_weight, bool saved_is_output, const std::optional<at::Tensor>& grad_residual) {
    auto r = row_norm_backward<Backend>("layer_norm_backward", grad_out, saved, normalized_shape, &mean, rstd, weight,
                                        bias, zero_centered_weight, saved_is_output, grad_residual, false);
    return {r[0], r[1], r[2]};
  }

  static std::tuple<at::Tensor, at::Tensor> rms_norm_backward(const at::Tensor& grad_out, const at::Tensor& saved,
                                                              at::IntArrayRef normalized_shape, const at::Tensor& rstd,
                                                              const std::optional<at::Tensor>& weight,
                                                              bool zero_centered_weight, bool saved_is_output,
                                                              const std::optional<at::Tensor>& grad_residual) {
    auto r = row_norm_backward<Backend>("rms_norm_backward", grad_out, saved, normalized_shape, nullptr, rstd, weight,
                                        std::nullopt, zero_centered_weight, saved_is_output, grad_residual, true);
    return {r[0], r[1]};
  }
};

template <typename Backend>
void register_row_norm_ops(torch::Library& m) {
  using Ops = RowNormOps<Backend>;
  m.impl("layer_norm", &Ops::layer_norm);
  m.impl("rms_norm", &Ops::rms_norm);
  m.impl("add_layer_norm", &Ops::add_layer_norm);
  m.impl("add_rms_norm", &Ops::add_rms_norm);
  m.impl("layer_norm_backward", &Ops::layer_norm_backward);
  m.impl("rms_norm_backward", &Ops::rms_norm_backward);
}

}  // namespace norm_ext
