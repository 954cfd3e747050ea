// CPU wrappers of the row-norm family: LayerNorm and RMSNorm, plain and with a fused residual add.
// They check inputs, allocate outputs and convert the affine parameters to the accumulation type once
// per call (which also applies the zero-centred 1 + w offset and keeps the parameter dtype out of the
// kernel templates); the kernels themselves are in row_norm_kernel_impl.h.

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "common/checks.h"
#include "common/row_norm_ops.h"
#include "cpu/row_norm_kernel.h"

namespace norm_ext {
namespace {

// Affine parameters as acc dtype arrays (or undefined when absent). zero_centered adds the 1 in the
// accumulation type, so a bf16 weight near zero does not lose the offset to rounding.
at::Tensor param_as_acc(const std::optional<at::Tensor>& p, at::ScalarType acc, bool add_one) {
  if (!p.has_value() || !p->defined()) return at::Tensor();
  at::Tensor out = p->to(acc).contiguous();
  if (add_one) out = out + 1;
  return out;
}

const void* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr() : nullptr;
}

bool defined(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined();
}

// Shared body of the four forward ops. residual is null for the plain ops.
std::vector<at::Tensor> row_norm_forward(const char* op, const at::Tensor& input_, const at::Tensor* residual_,
                                         std::optional<at::ScalarType> residual_dtype, at::IntArrayRef normalized_shape,
                                         const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                                         double eps, bool zero_centered, bool rms) {
  const RowShape shape = check_row_norm_inputs(op, input_, normalized_shape, weight, bias, eps);
  TORCH_CHECK(input_.device().is_cpu(), op, ": expected a CPU input, got ", input_.device());
  at::ScalarType h_dtype = input_.scalar_type();
  if (residual_ != nullptr) h_dtype = check_add_norm_inputs(op, input_, *residual_, residual_dtype);
  if (residual_ != nullptr && add_norm_needs_unfused_sum(*residual_, h_dtype)) {
    const at::Tensor h = residual_stream_unfused(input_, *residual_, h_dtype);
    auto result =
        row_norm_forward(op, h, nullptr, std::nullopt, normalized_shape, weight, bias, eps, zero_centered, rms);
    result.insert(result.begin() + 1, h);
    return result;
  }

  const at::Tensor input = input_.contiguous();
  const auto stat_shape = row_stat_shape(input, static_cast<int64_t>(normalized_shape.size()));
  const auto stat_opts = input.options().dtype(stat_dtype(input.scalar_type()));
  at::Tensor out = at::empty(input.sizes(), input.options());
  at::Tensor mean = rms ? at::Tensor() : at::empty(stat_shape, stat_opts);
  at::Tensor rstd = at::empty(stat_shape, stat_opts);
  at::Tensor residual, residual_out;
  if (residual_ != nullptr) {
    residual = residual_->to(h_dtype).contiguous();
    residual_out = at::empty(input.sizes(), input.options().dtype(h_dtype));
  }

  if (shape.rows * shape.cols != 0) {
    const at::ScalarType acc = stat_dtype(input.scalar_type());
    const at::Tensor w = param_as_acc(weight, acc, zero_centered);
    const at::Tensor b = param_as_acc(bias, acc, false);
    cpu::row_norm_fwd({input.scalar_type(), h_dtype, input.const_data_ptr(),
                       residual.defined() ? residual.const_data_ptr() : nullptr,
                       residual_out.defined() ? residual_out.mutable_data_ptr() : nullptr, out.mutable_data_ptr(),
                       rms ? nullptr : mean.mutable_data_ptr(), rstd.mutable_data_ptr(), data_or_null(w),
                       data_or_null(b), shape.rows, shape.cols, eps, rms});
  } else if (shape.rows > 0) {
    if (mean.defined()) mean.zero_();
    rstd.fill_(1.0 / std::sqrt(eps));
  }

  std::vector<at::Tensor> result{out};
  if (residual_ != nullptr) result.push_back(residual_out);
  if (!rms) result.push_back(mean);
  result.push_back(rstd);
  return result;
}

std::vector<at::Tensor> row_norm_backward(const char* op, const at::Tensor& grad_out_, const at::Tensor& saved_,
                                          at::IntArrayRef normalized_shape, const at::Tensor* mean_,
                                          const at::Tensor& rstd_, const std::optional<at::Tensor>& weight,
                                          const std::optional<at::Tensor>& bias, bool zero_centered,
                                          bool saved_is_output, const std::optional<at::Tensor>& grad_residual_,
                                          bool rms) {
  const RowShape shape =
      check_row_norm_backward_inputs(op, grad_out_, saved_, normalized_shape,
                                     (rms || saved_is_output) ? nullptr : mean_, rstd_, weight, bias, grad_residual_);
  TORCH_CHECK(grad_out_.device().is_cpu(), op, ": expected CPU tensors, got ", grad_out_.device());
  const at::ScalarType acc = stat_dtype(grad_out_.scalar_type());
  const at::Tensor grad_out = grad_out_.contiguous();
  const at::Tensor saved = saved_.contiguous();
  const at::Tensor rstd = rstd_.contiguous();
  const at::Tensor mean = (rms || saved_is_output) ? at::Tensor() : mean_->contiguous();
  const at::Tensor grad_residual = defined(grad_residual_) ? grad_residual_->contiguous() : at::Tensor();

  at::Tensor grad_input = at::empty(saved.sizes(), saved.options());
  const auto acc_opts = grad_out.options().dtype(acc);
  at::Tensor dw = defined(weight) ? at::zeros(normalized_shape, acc_opts) : at::Tensor();
  at::Tensor db = defined(bias) ? at::zeros(normalized_shape, acc_opts) : at::Tensor();

  if (shape.rows * shape.cols != 0) {
    const at::Tensor w = param_as_acc(weight, acc, zero_centered);
    const at::Tensor b = saved_is_output ? param_as_acc(bias, acc, false) : at::Tensor();
    cpu::row_norm_bwd({grad_out.scalar_type(), saved.scalar_type(), grad_out.const_data_ptr(), saved.const_data_ptr(),
                       grad_residual.defined() ? grad_residual.const_data_ptr() : nullptr,
                       grad_input.mutable_data_ptr(), mean.defined() ? mean.const_data_ptr() : nullptr,
                       rstd.const_data_ptr(), data_or_null(w), data_or_null(b),
                       dw.defined() ? dw.mutable_data_ptr() : nullptr, db.defined() ? db.mutable_data_ptr() : nullptr,
                       shape.rows, shape.cols, saved_is_output, rms});
  }
  const at::Tensor empty = at::empty({0}, grad_out.options());
  std::vector<at::Tensor> result{grad_input, dw.defined() ? dw.to(weight->scalar_type()) : empty};
  if (!rms) result.push_back(db.defined() ? db.to(bias->scalar_type()) : empty);
  return result;
}

}  // namespace
}  // namespace norm_ext

TORCH_LIBRARY_IMPL(norm_ext, CPU, m) {
  norm_ext::register_row_norm_ops<norm_ext::row_norm_forward, norm_ext::row_norm_backward>(m);
}
