#pragma once
// Input validation shared by the CPU and CUDA wrappers. Every failure names the op and the offending
// argument; TORCH_CHECK_VALUE / TORCH_CHECK_TYPE surface in Python as ValueError / TypeError.

#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <optional>

namespace norm_ext {

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// An argument the op writes to: no two of its elements may share memory.
inline void check_writable(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(at::has_internal_overlap(t) != at::MemOverlap::Yes, op, ": ", name,
                    " is written to, so its elements may not share memory (an expanded tensor), got strides ",
                    t.strides());
}

inline void check_eps(const char* op, double eps) {
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0.0, op, ": eps must be a finite non-negative number, got ", eps);
}

inline void check_input_dtype(const char* op, const at::Tensor& input, const char* name = "input") {
  TORCH_CHECK_TYPE(is_supported_float(input.scalar_type()), op, ": ", name,
                   " must be float32, float64, float16 or bfloat16, got ", input.scalar_type());
}

inline void check_same_device(const char* op, const char* name, const at::Tensor& t, const at::Tensor& input) {
  TORCH_CHECK(t.device() == input.device(), op, ": ", name, " is on ", t.device(), " but input is on ", input.device());
}

// An affine parameter may be stored in the input's dtype or in float32 (mixed precision: bf16
// activations with fp32 master weights). fp64 inputs take fp64 parameters only.
inline void check_param(const char* op, const char* name, const at::Tensor& p, const at::Tensor& input,
                        at::IntArrayRef expected_shape) {
  check_same_device(op, name, p, input);
  TORCH_CHECK_VALUE(p.sizes() == expected_shape, op, ": ", name, " must have shape ", expected_shape, ", got ",
                    p.sizes());
  const bool ok =
      p.scalar_type() == input.scalar_type() || (p.scalar_type() == at::kFloat && input.scalar_type() != at::kDouble);
  TORCH_CHECK_TYPE(ok, op, ": ", name, " must have the input's dtype (", input.scalar_type(), ") or float32, got ",
                   p.scalar_type());
}

// Per-row and per-channel statistics are accumulated and returned in float32 (float64 for float64).
inline at::ScalarType stat_dtype(at::ScalarType input) {
  return input == at::kDouble ? at::kDouble : at::kFloat;
}

struct RowShape {
  int64_t rows;
  int64_t cols;
};

// LayerNorm / RMSNorm view the input as rows x cols, cols = prod(normalized_shape).
inline RowShape check_row_norm_inputs(const char* op, const at::Tensor& input, at::IntArrayRef normalized_shape,
                                      const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                                      double eps) {
  check_eps(op, eps);
  check_input_dtype(op, input);
  const int64_t k = static_cast<int64_t>(normalized_shape.size());
  TORCH_CHECK_VALUE(k > 0, op, ": normalized_shape must name at least one dimension");
  TORCH_CHECK_VALUE(input.dim() >= k && input.sizes().slice(input.dim() - k) == normalized_shape, op,
                    ": normalized_shape ", normalized_shape, " does not match the trailing dimensions of input ",
                    "of shape ", input.sizes());
  if (weight.has_value() && weight->defined()) {
    check_param(op, "weight", *weight, input, normalized_shape);
  }
  if (bias.has_value() && bias->defined()) {
    check_param(op, "bias", *bias, input, normalized_shape);
    if (weight.has_value() && weight->defined()) {
      TORCH_CHECK_TYPE(weight->scalar_type() == bias->scalar_type(), op, ": weight (", weight->scalar_type(),
                       ") and bias (", bias->scalar_type(), ") must have the same dtype");
    }
  }
  int64_t cols = 1;
  for (const int64_t s : normalized_shape) cols *= s;
  int64_t rows = 1;
  for (int64_t d = 0; d < input.dim() - k; ++d) rows *= input.size(d);
  return {rows, cols};
}

// Shape of the per-row statistics: the input's leading (un-normalized) dimensions.
inline std::vector<int64_t> row_stat_shape(const at::Tensor& input, int64_t normalized_ndim) {
  return std::vector<int64_t>(input.sizes().begin(), input.sizes().end() - normalized_ndim);
}

// Checks shared by the row-norm backward ops; `mean` is null where the backward does not read it. grad_out has the
// forward output's dtype, which is the dtype the affine parameters relate to; `saved` is the forward input (or, for the
// fused residual ops, the residual stream h, which may be kept in float32), or the forward output when the forward ran
// memory-efficient.
inline RowShape check_row_norm_backward_inputs(const char* op, const at::Tensor& grad_out, const at::Tensor& saved,
                                               at::IntArrayRef normalized_shape, const at::Tensor* mean,
                                               const at::Tensor& rstd, const std::optional<at::Tensor>& weight,
                                               const std::optional<at::Tensor>& bias,
                                               const std::optional<at::Tensor>& grad_residual) {
  check_input_dtype(op, grad_out, "grad_out");
  const RowShape shape = check_row_norm_inputs(op, grad_out, normalized_shape, weight, bias, 0.0);
  check_same_device(op, "saved tensor", saved, grad_out);
  TORCH_CHECK_VALUE(saved.sizes() == grad_out.sizes(), op, ": grad_out has shape ", grad_out.sizes(),
                    " but the saved tensor has shape ", saved.sizes());
  TORCH_CHECK_TYPE(saved.scalar_type() == grad_out.scalar_type() ||
                       (saved.scalar_type() == at::kFloat && grad_out.scalar_type() != at::kDouble),
                   op, ": the saved tensor must have grad_out's dtype (", grad_out.scalar_type(), ") or float32, got ",
                   saved.scalar_type());
  // The statistics must have the shape the forward returned them in: one of another shape but the same
  // element count is as likely a mix-up of tensors as a reshape.
  const std::vector<int64_t> stat_shape = row_stat_shape(grad_out, static_cast<int64_t>(normalized_shape.size()));
  const at::ScalarType acc = stat_dtype(grad_out.scalar_type());
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"rstd", &rstd}, {"mean", mean}}) {
    if (t == nullptr) continue;
    check_same_device(op, name, *t, grad_out);
    TORCH_CHECK_VALUE(t->sizes() == at::IntArrayRef(stat_shape), op, ": ", name, " must have shape ",
                      at::IntArrayRef(stat_shape), " (one value per row), got ", t->sizes());
    TORCH_CHECK_TYPE(t->scalar_type() == acc, op, ": ", name, " must be ", acc, ", got ", t->scalar_type());
  }
  if (grad_residual.has_value() && grad_residual->defined()) {
    check_same_device(op, "grad_residual", *grad_residual, grad_out);
    TORCH_CHECK_VALUE(grad_residual->sizes() == saved.sizes(), op, ": grad_residual has shape ", grad_residual->sizes(),
                      ", expected ", saved.sizes());
    TORCH_CHECK_TYPE(grad_residual->scalar_type() == saved.scalar_type(), op, ": grad_residual dtype ",
                     grad_residual->scalar_type(), " differs from the saved tensor's dtype ", saved.scalar_type());
  }
  return shape;
}

// Dtype of the residual stream h = input + residual in the fused ops: residual_dtype when given,
// else the residual's dtype. Only the input's dtype or float32 are accepted, which keeps the kernels'
// instantiations to those pairs.
inline at::ScalarType check_add_norm_inputs(const char* op, const at::Tensor& input, const at::Tensor& residual,
                                            std::optional<at::ScalarType> residual_dtype) {
  check_same_device(op, "residual", residual, input);
  TORCH_CHECK_VALUE(residual.sizes() == input.sizes(), op, ": residual has shape ", residual.sizes(),
                    " but input has shape ", input.sizes());
  const auto ok = [&](at::ScalarType t) {
    return t == input.scalar_type() || (t == at::kFloat && input.scalar_type() != at::kDouble);
  };
  TORCH_CHECK_TYPE(ok(residual.scalar_type()), op, ": residual must have the input's dtype (", input.scalar_type(),
                   ") or float32, got ", residual.scalar_type());
  const at::ScalarType h_dtype = residual_dtype.value_or(residual.scalar_type());
  TORCH_CHECK_TYPE(ok(h_dtype), op, ": residual_dtype must be the input's dtype (", input.scalar_type(),
                   ") or float32, got ", h_dtype);
  return h_dtype;
}

}  // namespace norm_ext
