#pragma once
// The six row-norm ops expressed through a backend's two shared bodies (row_norm_forward and
// row_norm_backward in csrc/cpu/layer_norm.cpp and csrc/cuda/layer_norm.cu), so that the backends
// differ only in those bodies and register with one call.

#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

namespace norm_ext {

// A float32 residual summed into a narrower stream must be rounded once, after the add; the fused
// kernels read the residual in the stream's dtype, which would round it twice. This mix is rare, so
// the wrappers compute h unfused for it and normalise h with the plain kernel.
inline bool add_norm_needs_unfused_sum(const at::Tensor& residual, at::ScalarType h_dtype) {
  return residual.scalar_type() == at::kFloat && h_dtype != at::kFloat;
}

inline at::Tensor residual_stream_unfused(const at::Tensor& input, const at::Tensor& residual, at::ScalarType h_dtype) {
  return (input.to(at::kFloat) + residual).to(h_dtype);
}

// Forward body: (op name, input, residual or null, residual_dtype, normalized_shape, weight, bias,
// eps, zero_centered, rms) -> {out, [residual_out], [mean], rstd}.
using RowNormForwardFn = std::vector<at::Tensor> (*)(const char*, const at::Tensor&, const at::Tensor*,
                                                     std::optional<at::ScalarType>, at::IntArrayRef,
                                                     const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                                                     double, bool, bool);
// Backward body: (op name, grad_out, saved, normalized_shape, mean or null, rstd, weight, bias,
// zero_centered, saved_is_output, grad_residual, rms) -> {grad_input, grad_weight, [grad_bias]}.
using RowNormBackwardFn = std::vector<at::Tensor> (*)(const char*, const at::Tensor&, const at::Tensor&,
                                                      at::IntArrayRef, const at::Tensor*, const at::Tensor&,
                                                      const std::optional<at::Tensor>&,
                                                      const std::optional<at::Tensor>&, bool, bool,
                                                      const std::optional<at::Tensor>&, bool);

template <RowNormForwardFn Forward, RowNormBackwardFn Backward>
struct RowNormOps {
  // memory_efficient only steers the autograd formula (Python side); the kernels ignore it.
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm(const at::Tensor& input,
                                                                   at::IntArrayRef normalized_shape,
                                                                   const std::optional<at::Tensor>& weight,
                                                                   const std::optional<at::Tensor>& bias, double eps,
                                                                   bool zero_centered_weight, bool) {
    auto r = Forward("layer_norm", input, nullptr, std::nullopt, normalized_shape, weight, bias, eps,
                     zero_centered_weight, false);
    return {r[0], r[1], r[2]};
  }

  static std::tuple<at::Tensor, at::Tensor> rms_norm(const at::Tensor& input, at::IntArrayRef normalized_shape,
                                                     const std::optional<at::Tensor>& weight, double eps,
                                                     bool zero_centered_weight, bool) {
    auto r = Forward("rms_norm", input, nullptr, std::nullopt, normalized_shape, weight, std::nullopt, eps,
                     zero_centered_weight, true);
    return {r[0], r[1]};
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_layer_norm(
      const at::Tensor& input, const at::Tensor& residual, at::IntArrayRef normalized_shape,
      const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double eps,
      std::optional<at::ScalarType> residual_dtype, bool zero_centered_weight, bool) {
    auto r = Forward("add_layer_norm", input, &residual, residual_dtype, normalized_shape, weight, bias, eps,
                     zero_centered_weight, false);
    return {r[0], r[1], r[2], r[3]};
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor> add_rms_norm(
      const at::Tensor& input, const at::Tensor& residual, at::IntArrayRef normalized_shape,
      const std::optional<at::Tensor>& weight, double eps, std::optional<at::ScalarType> residual_dtype,
      bool zero_centered_weight, bool) {
    auto r = Forward("add_rms_norm", input, &residual, residual_dtype, normalized_shape, weight, std::nullopt, eps,
                     zero_centered_weight, true);
    return {r[0], r[1], r[2]};
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_backward(
      const at::Tensor& grad_out, const at::Tensor& saved, at::IntArrayRef normalized_shape, const at::Tensor& mean,
      const at::Tensor& rstd, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
      bool zero_centered_weight, bool saved_is_output, const std::optional<at::Tensor>& grad_residual) {
    auto r = Backward("layer_norm_backward", grad_out, saved, normalized_shape, &mean, rstd, weight, bias,
                      zero_centered_weight, saved_is_output, grad_residual, false);
    return {r[0], r[1], r[2]};
  }

  static std::tuple<at::Tensor, at::Tensor> rms_norm_backward(const at::Tensor& grad_out, const at::Tensor& saved,
                                                              at::IntArrayRef normalized_shape, const at::Tensor& rstd,
                                                              const std::optional<at::Tensor>& weight,
                                                              bool zero_centered_weight, bool saved_is_output,
                                                              const std::optional<at::Tensor>& grad_residual) {
    auto r = Backward("rms_norm_backward", grad_out, saved, normalized_shape, nullptr, rstd, weight, std::nullopt,
                      zero_centered_weight, saved_is_output, grad_residual, true);
    return {r[0], r[1]};
  }
};

template <RowNormForwardFn Forward, RowNormBackwardFn Backward>
void register_row_norm_ops(torch::Library& m) {
  using Ops = RowNormOps<Forward, Backward>;
  m.impl("layer_norm", &Ops::layer_norm);
  m.impl("rms_norm", &Ops::rms_norm);
  m.impl("add_layer_norm", &Ops::add_layer_norm);
  m.impl("add_rms_norm", &Ops::add_rms_norm);
  m.impl("layer_norm_backward", &Ops::layer_norm_backward);
  m.impl("rms_norm_backward", &Ops::rms_norm_backward);
}

}  // namespace norm_ext
