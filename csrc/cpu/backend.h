#pragma once
// Helpers of the CPU backends (csrc/cpu/*.cpp) between the op glue's tensors and the type-erased
// kernel arguments: the kernels take affine parameters and accumulate their gradients in the
// accumulation type (float, or double for double input), so these conversions happen once per call.

#include <ATen/ATen.h>

namespace norm_ext::cpu {

inline const void* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr() : nullptr;
}

inline void* mutable_data_or_null(const at::Tensor& t) {
  return t.defined() ? t.mutable_data_ptr() : nullptr;
}

// A parameter as a contiguous acc-dtype array, undefined when absent. add_one applies a zero-centred
// weight's 1 + w in the accumulation type, where a bf16 weight near zero keeps it.
inline at::Tensor param_as_acc(const at::Tensor& p, at::ScalarType acc, bool add_one = false) {
  if (!p.defined()) return at::Tensor();
  at::Tensor out = p.to(acc).contiguous();
  if (add_one) out = out + 1;
  return out;
}

// Where a kernel accumulates a parameter gradient: `grad` itself (zeroed) when it has the acc dtype,
// else a zeroed acc-dtype buffer for copy_back.
inline at::Tensor acc_grad(const at::Tensor& grad, at::ScalarType acc) {
  if (!grad.defined()) return at::Tensor();
  return grad.scalar_type() == acc ? grad.zero_() : at::zeros(grad.sizes(), grad.options().dtype(acc));
}

inline void copy_back(const at::Tensor& acc, const at::Tensor& grad) {
  if (acc.defined() && !acc.is_same(grad)) grad.copy_(acc);
}

}  // namespace norm_ext::cpu
