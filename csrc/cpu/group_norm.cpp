// CPU wrappers of GroupNorm (and of InstanceNorm, which is GroupNorm with G = C), with an optional
// fused SiLU on the output: input checks, layout, allocation and parameter conversion; the kernels
// themselves are in group_norm_kernel_impl.h, compiled once per instruction set (see isa.h).

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>

#include "common/group_norm.h"
#include "cpu/group_norm_kernel.h"

namespace norm_ext {
namespace {

at::ScalarType acc_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

bool defined(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined();
}

at::Tensor param_as_acc(const std::optional<at::Tensor>& p, at::ScalarType acc) {
  if (!defined(p)) return at::Tensor();
  return p->to(acc).contiguous();
}

const void* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr() : nullptr;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_cpu(const at::Tensor& input_, int64_t num_groups,
                                                              const std::optional<at::Tensor>& weight,
                                                              const std::optional<at::Tensor>& bias, double eps,
                                                              std::optional<c10::string_view> activation) {
  constexpr const char* op = "group_norm";
  const GroupNormShape s = check_group_norm_inputs(op, input_, num_groups, weight, bias, eps);
  const bool silu = parse_group_norm_activation(op, activation);
  TORCH_CHECK(input_.device().is_cpu(), op, ": expected a CPU input, got ", input_.device());
  const at::MemoryFormat format = group_norm_memory_format(input_);
  const at::Tensor input = input_.contiguous(format);
  const auto stat_opts = input.options().dtype(acc_dtype(input.scalar_type()));
  at::Tensor out = at::empty(input.sizes(), input.options().memory_format(format));
  at::Tensor mean = at::empty({s.n, s.groups}, stat_opts);
  at::Tensor rstd = at::empty({s.n, s.groups}, stat_opts);
  if (input.numel() == 0) {
    mean.zero_();
    rstd.fill_(1.0 / std::sqrt(eps));
    return {out, mean, rstd};
  }
  const at::ScalarType acc = acc_dtype(input.scalar_type());
  const at::Tensor w = param_as_acc(weight, acc);
  const at::Tensor b = param_as_acc(bias, acc);
  cpu::group_norm_fwd({input.scalar_type(), input.const_data_ptr(), out.mutable_data_ptr(), mean.mutable_data_ptr(),
                       rstd.mutable_data_ptr(), data_or_null(w), data_or_null(b), s, eps, silu});
  return {out, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_backward_cpu(const at::Tensor& grad_out_,
                                                                       const at::Tensor& input_, int64_t num_groups,
                                                                       const at::Tensor& mean, const at::Tensor& rstd,
                                                                       const std::optional<at::Tensor>& weight,
                                                                       const std::optional<at::Tensor>& bias,
                                                                       std::optional<c10::string_view> activation) {
  constexpr const char* op = "group_norm_backward";
  const GroupNormShape s =
      check_group_norm_backward_inputs(op, grad_out_, input_, num_groups, mean, rstd, weight, bias);
  const bool silu = parse_group_norm_activation(op, activation);
  TORCH_CHECK(input_.device().is_cpu(), op, ": expected CPU tensors, got ", input_.device());
  const at::MemoryFormat format = group_norm_memory_format(input_);
  const at::Tensor input = input_.contiguous(format);
  const at::Tensor grad_out = grad_out_.contiguous(format);
  const at::ScalarType acc = acc_dtype(input.scalar_type());
  at::Tensor grad_input = at::empty(input.sizes(), input.options().memory_format(format));
  at::Tensor dw = defined(weight) ? at::zeros({s.c}, input.options().dtype(acc)) : at::Tensor();
  at::Tensor db = defined(bias) ? at::zeros({s.c}, input.options().dtype(acc)) : at::Tensor();
  if (input.numel() != 0) {
    const at::Tensor w = param_as_acc(weight, acc);
    const at::Tensor b = param_as_acc(bias, acc);
    const at::Tensor mean_c = mean.contiguous();
    const at::Tensor rstd_c = rstd.contiguous();
    cpu::group_norm_bwd({input.scalar_type(), grad_out.const_data_ptr(), input.const_data_ptr(),
                         grad_input.mutable_data_ptr(), mean_c.const_data_ptr(), rstd_c.const_data_ptr(),
                         data_or_null(w), data_or_null(b), dw.defined() ? dw.mutable_data_ptr() : nullptr,
                         db.defined() ? db.mutable_data_ptr() : nullptr, s, silu});
  }
  const at::Tensor empty = at::empty({0}, input.options());
  return {grad_input, dw.defined() ? dw.to(weight->scalar_type()) : empty,
          db.defined() ? db.to(bias->scalar_type()) : empty};
}

}  // namespace
}  // namespace norm_ext

TORCH_LIBRARY_IMPL(norm_ext, CPU, m) {
  m.impl("group_norm", &norm_ext::group_norm_cpu);
  m.impl("group_norm_backward", &norm_ext::group_norm_backward_cpu);
}
