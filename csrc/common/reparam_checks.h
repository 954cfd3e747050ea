#pragma once
// Input validation and geometry shared by the CPU and CUDA wrappers of weight_norm and PowerNorm.

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

#include "common/checks.h"

namespace norm_ext {

// v viewed as (outer, size(dim), inner): the norm of slice d runs over all (o, i).
struct WeightNormShape {
  int64_t outer;
  int64_t slices;
  int64_t inner;
};

inline WeightNormShape check_weight_norm_inputs(const char* op, const at::Tensor& v, const at::Tensor& g,
                                                std::optional<int64_t> dim) {
  check_input_dtype(op, v, "v");
  check_same_device(op, "g", g, v);
  const bool g_ok =
      g.scalar_type() == v.scalar_type() || (g.scalar_type() == at::kFloat && v.scalar_type() != at::kDouble);
  TORCH_CHECK_TYPE(g_ok, op, ": g must have v's dtype (", v.scalar_type(), ") or float32, got ", g.scalar_type());
  TORCH_CHECK_VALUE(v.dim() > 0, op, ": v must have at least one dimension");
  WeightNormShape shape{1, 1, v.numel()};
  if (dim.has_value()) {
    const int64_t d = *dim;
    TORCH_CHECK_VALUE(d >= 0 && d < v.dim(), op, ": dim ", d, " is out of range for v of shape ", v.sizes());
    shape.outer = 1;
    for (int64_t k = 0; k < d; ++k) shape.outer *= v.size(k);
    shape.slices = v.size(d);
    shape.inner = 1;
    for (int64_t k = d + 1; k < v.dim(); ++k) shape.inner *= v.size(k);
  }
  // torch's shape for g: v's rank, size 1 except at dim (with dim None, one element; torch's legacy
  // weight_norm keeps that as a 0-d tensor).
  std::vector<int64_t> g_shape(v.dim(), 1);
  if (dim.has_value()) g_shape[*dim] = shape.slices;
  TORCH_CHECK_VALUE(g.sizes() == at::IntArrayRef(g_shape) || (!dim.has_value() && g.dim() == 0), op,
                    ": g must have shape ", at::IntArrayRef(g_shape),
                    " (v's rank, one element per slice of v along dim), got ", g.sizes());
  return shape;
}

inline void check_weight_norm_backward_inputs(const char* op, const at::Tensor& grad_w, const at::Tensor& v,
                                              const at::Tensor& g, const at::Tensor& norm) {
  check_same_device(op, "grad_w", grad_w, v);
  check_same_device(op, "norm", norm, v);
  TORCH_CHECK_VALUE(grad_w.sizes() == v.sizes(), op, ": grad_w has shape ", grad_w.sizes(), " but v has shape ",
                    v.sizes());
  TORCH_CHECK_TYPE(grad_w.scalar_type() == v.scalar_type(), op, ": grad_w dtype ", grad_w.scalar_type(),
                   " differs from v's dtype ", v.scalar_type());
  const auto acc = v.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK_TYPE(norm.scalar_type() == acc, op, ": norm must be ", acc, ", got ", norm.scalar_type());
  TORCH_CHECK_VALUE(norm.sizes() == g.sizes(), op, ": norm must have g's shape ", g.sizes(), ", got ", norm.sizes());
}

struct TokenShape {
  int64_t tokens;
  int64_t channels;
};

inline at::ScalarType acc_dtype_of(const at::Tensor& input) {
  return input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// PowerNorm input is (B, T, C); pad_mask is (B, T) bool with True marking padding.
inline TokenShape check_power_norm_input(const char* op, const at::Tensor& input,
                                         const std::optional<at::Tensor>& pad_mask) {
  check_input_dtype(op, input);
  TORCH_CHECK_VALUE(input.dim() == 3, op, ": input must be (batch, time, channels), got shape ", input.sizes());
  if (pad_mask.has_value() && pad_mask->defined()) {
    check_same_device(op, "pad_mask", *pad_mask, input);
    TORCH_CHECK_TYPE(pad_mask->scalar_type() == at::kBool, op, ": pad_mask must be bool, got ",
                     pad_mask->scalar_type());
    TORCH_CHECK_VALUE(pad_mask->dim() == 2 && pad_mask->size(0) == input.size(0) && pad_mask->size(1) == input.size(1),
                      op, ": pad_mask must have shape (batch, time) = (", input.size(0), ", ", input.size(1), "), got ",
                      pad_mask->sizes());
  }
  return {input.size(0) * input.size(1), input.size(2)};
}

// Per-channel float32 (float64 for float64 input) vectors: the scale and the running Gamma.
inline void check_channel_stat(const char* op, const char* name, const at::Tensor& t, const at::Tensor& input) {
  check_same_device(op, name, t, input);
  TORCH_CHECK_TYPE(t.scalar_type() == acc_dtype_of(input), op, ": ", name, " must be ", acc_dtype_of(input), " for ",
                   input.scalar_type(), " input, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == input.size(2), op, ": ", name, " must have shape (", input.size(2),
                    "), got ", t.sizes());
}

inline void check_power_norm_params(const char* op, const at::Tensor& input, const at::Tensor& scale,
                                    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                                    const at::Tensor& ema_gz) {
  check_channel_stat(op, "scale", scale, input);
  check_channel_stat(op, "ema_gz", ema_gz, input);
  const int64_t channels = input.size(2);
  if (weight.has_value() && weight->defined()) check_param(op, "weight", *weight, input, {channels});
  if (bias.has_value() && bias->defined()) check_param(op, "bias", *bias, input, {channels});
  if (weight.has_value() && weight->defined() && bias.has_value() && bias->defined()) {
    TORCH_CHECK_TYPE(weight->scalar_type() == bias->scalar_type(), op, ": weight (", weight->scalar_type(),
                     ") and bias (", bias->scalar_type(), ") must have the same dtype");
  }
}

}  // namespace norm_ext
