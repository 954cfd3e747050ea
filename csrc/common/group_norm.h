#pragma once
// Shapes, layout and input validation shared by the CPU and CUDA GroupNorm kernels.
//
// An input of shape (N, C, *spatial) is viewed either as N x C x HW (contiguous, "NCHW") or, for a
// 4-D/5-D channels_last tensor, as N x HW x C ("NHWC"). Group g of sample n holds channels
// [g * D, (g + 1) * D), D = C / G, over all HW positions. Statistics are (N, G), in float32 (float64
// for float64 input).

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>
#include <string_view>

#include "checks.h"

namespace norm_ext {

struct GroupNormShape {
  int64_t n;
  int64_t c;
  int64_t hw;
  int64_t groups;
  int64_t channels_per_group;
  bool channels_last;
};

// The memory format the kernels read and write. A tensor that is contiguous in both formats (C == 1
// or HW == 1) is treated as contiguous; anything that is neither is made contiguous.
inline at::MemoryFormat group_norm_memory_format(const at::Tensor& input) {
  if (input.is_contiguous()) return at::MemoryFormat::Contiguous;
  if (input.dim() == 4 && input.is_contiguous(at::MemoryFormat::ChannelsLast)) return at::MemoryFormat::ChannelsLast;
  if (input.dim() == 5 && input.is_contiguous(at::MemoryFormat::ChannelsLast3d)) {
    return at::MemoryFormat::ChannelsLast3d;
  }
  return at::MemoryFormat::Contiguous;
}

// activation: None or "silu". Returns whether SiLU is fused.
inline bool parse_group_norm_activation(const char* op, const std::optional<c10::string_view>& activation) {
  if (!activation.has_value()) return false;
  const std::string_view name(activation->data(), activation->size());
  TORCH_CHECK_VALUE(name == "silu", op, ": activation must be None or 'silu', got '", name, "'");
  return true;
}

inline GroupNormShape check_group_norm_inputs(const char* op, const at::Tensor& input, int64_t num_groups,
                                              const std::optional<at::Tensor>& weight,
                                              const std::optional<at::Tensor>& bias, double eps) {
  check_eps(op, eps);
  check_input_dtype(op, input);
  TORCH_CHECK_VALUE(input.dim() >= 2, op, ": input must have shape (N, C, *), got ", input.sizes());
  const int64_t c = input.size(1);
  TORCH_CHECK_VALUE(num_groups > 0, op, ": num_groups must be positive, got ", num_groups);
  TORCH_CHECK_VALUE(c % num_groups == 0, op, ": num_groups (", num_groups, ") must divide the number of channels (", c,
                    ")");
  const int64_t channel_shape[1] = {c};
  if (weight.has_value() && weight->defined()) check_param(op, "weight", *weight, input, channel_shape);
  if (bias.has_value() && bias->defined()) {
    check_param(op, "bias", *bias, input, channel_shape);
    if (weight.has_value() && weight->defined()) {
      TORCH_CHECK_TYPE(weight->scalar_type() == bias->scalar_type(), op, ": weight (", weight->scalar_type(),
                       ") and bias (", bias->scalar_type(), ") must have the same dtype");
    }
  }
  int64_t hw = 1;
  for (int64_t d = 2; d < input.dim(); ++d) hw *= input.size(d);
  const bool channels_last = group_norm_memory_format(input) != at::MemoryFormat::Contiguous;
  return {input.size(0), c, hw, num_groups, c / num_groups, channels_last};
}

// The backward's extra checks: grad_out matches the input, statistics hold one value per (n, g).
inline GroupNormShape check_group_norm_backward_inputs(const char* op, const at::Tensor& grad_out,
                                                       const at::Tensor& input, int64_t num_groups,
                                                       const at::Tensor& mean, const at::Tensor& rstd,
                                                       const std::optional<at::Tensor>& weight,
                                                       const std::optional<at::Tensor>& bias) {
  check_same_device(op, "grad_out", grad_out, input);
  TORCH_CHECK_VALUE(grad_out.sizes() == input.sizes(), op, ": grad_out has shape ", grad_out.sizes(),
                    " but input has shape ", input.sizes());
  const GroupNormShape shape = check_group_norm_inputs(op, input, num_groups, weight, bias, 0.0);
  TORCH_CHECK_TYPE(grad_out.scalar_type() == input.scalar_type(), op, ": grad_out dtype ", grad_out.scalar_type(),
                   " differs from the input's ", input.scalar_type());
  const at::ScalarType acc = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"mean", mean}, {"rstd", rstd}}) {
    check_same_device(op, name, t, input);
    TORCH_CHECK_VALUE(t.dim() == 2 && t.size(0) == shape.n && t.size(1) == shape.groups, op, ": ", name,
                      " must have shape (N, num_groups) = (", shape.n, ", ", shape.groups, "), got ", t.sizes());
    TORCH_CHECK_TYPE(t.scalar_type() == acc, op, ": ", name, " must be ", acc, ", got ", t.scalar_type());
  }
  return shape;
}

}  // namespace norm_ext
