// CPU wrappers of weight normalization: w = g * v / ||v||, the norm over every dim but `dim`. v is
// viewed as (outer, slices, inner); the per-slice reductions and the element-wise passes are in
// weight_norm_kernel_impl.h. g (tiny) is converted to the accumulation type once, which keeps its
// dtype out of the kernel templates.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/reparam_checks.h"
#include "cpu/weight_norm_kernel.h"

namespace norm_ext {
namespace {

cpu::WeightNormLayout layout_of(const WeightNormShape& s) {
  return {s.outer, s.slices, s.inner};
}

// dim=0 (outer == 1), with a slice for every thread: each row is finished while it is in cache.
bool use_row_kernels(const WeightNormShape& s) {
  return s.outer == 1 && s.slices >= at::get_num_threads();
}

std::tuple<at::Tensor, at::Tensor> weight_norm_cpu(const at::Tensor& v_in, const at::Tensor& g,
                                                   std::optional<int64_t> dim) {
  constexpr const char* op = "norm_ext::weight_norm";
  const WeightNormShape shape = check_weight_norm_inputs(op, v_in, g, dim);
  TORCH_CHECK(v_in.device().is_cpu(), op, ": expected CPU tensors, got v on ", v_in.device());
  const at::Tensor v = v_in.contiguous();
  const auto acc_type = acc_dtype_of(v);
  at::Tensor w = at::empty_like(v, at::MemoryFormat::Contiguous);
  at::Tensor norm = at::empty(g.sizes(), v.options().dtype(acc_type));
  if (v.numel() == 0) {
    norm.zero_();
    return {w, norm};
  }
  const at::Tensor g_acc = g.to(acc_type).contiguous().view({-1});
  if (use_row_kernels(shape)) {
    cpu::weight_norm_rows_fwd({v.scalar_type(), shape.slices, shape.inner, v.const_data_ptr(), g_acc.const_data_ptr(),
                               w.mutable_data_ptr(), norm.mutable_data_ptr()});
    return {w, norm};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "weight_norm_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    acc_t* norm_ptr = norm.data_ptr<acc_t>();
    cpu::slice_dots({v.scalar_type(), layout_of(shape), v.const_data_ptr(), v.const_data_ptr(), norm_ptr});
    std::vector<acc_t> alpha(shape.slices);
    const acc_t* g_ptr = g_acc.const_data_ptr<acc_t>();
    for (int64_t d = 0; d < shape.slices; ++d) {
      norm_ptr[d] = std::sqrt(norm_ptr[d]);
      alpha[d] = g_ptr[d] / norm_ptr[d];
    }
    cpu::slice_axpby(
        {v.scalar_type(), layout_of(shape), v.const_data_ptr(), nullptr, alpha.data(), nullptr, w.mutable_data_ptr()});
  });
  return {w, norm};
}

// With s = g / n and c = sum(grad_w * v) per slice: grad_g = c / n and
// grad_v = s * grad_w - (s * c / n^2) * v, the projection of grad_w off v, scaled.
std::tuple<at::Tensor, at::Tensor> weight_norm_backward_cpu(const at::Tensor& grad_w_in, const at::Tensor& v_in,
                                                            const at::Tensor& g, const at::Tensor& norm_in,
                                                            std::optional<int64_t> dim) {
  constexpr const char* op = "norm_ext::weight_norm_backward";
  const WeightNormShape shape = check_weight_norm_inputs(op, v_in, g, dim);
  check_weight_norm_backward_inputs(op, grad_w_in, v_in, norm_in, shape);
  TORCH_CHECK(v_in.device().is_cpu(), op, ": expected CPU tensors, got v on ", v_in.device());
  const at::Tensor v = v_in.contiguous();
  const at::Tensor grad_w = grad_w_in.contiguous();
  const auto acc_type = acc_dtype_of(v);
  at::Tensor grad_v = at::empty_like(v, at::MemoryFormat::Contiguous);
  at::Tensor grad_g_acc = at::empty({shape.slices}, v.options().dtype(acc_type));
  if (v.numel() == 0) {
    return {grad_v, at::zeros_like(g)};
  }
  const at::Tensor g_acc = g.to(acc_type).contiguous().view({-1});
  const at::Tensor norm = norm_in.contiguous().view({-1});
  if (use_row_kernels(shape)) {
    cpu::weight_norm_rows_bwd({v.scalar_type(), shape.slices, shape.inner, grad_w.const_data_ptr(), v.const_data_ptr(),
                               g_acc.const_data_ptr(), norm.const_data_ptr(), grad_v.mutable_data_ptr(),
                               grad_g_acc.mutable_data_ptr()});
    return {grad_v, grad_g_acc.view(g.sizes()).to(g.scalar_type())};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "weight_norm_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<acc_t> dots(shape.slices), alpha(shape.slices), beta(shape.slices);
    cpu::slice_dots({v.scalar_type(), layout_of(shape), grad_w.const_data_ptr(), v.const_data_ptr(), dots.data()});
    const acc_t* g_ptr = g_acc.const_data_ptr<acc_t>();
    const acc_t* n_ptr = norm.const_data_ptr<acc_t>();
    acc_t* grad_g_ptr = grad_g_acc.data_ptr<acc_t>();
    for (int64_t d = 0; d < shape.slices; ++d) {
      const acc_t inv_n = acc_t(1) / n_ptr[d];
      grad_g_ptr[d] = dots[d] * inv_n;
      alpha[d] = g_ptr[d] * inv_n;
      beta[d] = alpha[d] * dots[d] * inv_n * inv_n;
    }
    cpu::slice_axpby({v.scalar_type(), layout_of(shape), grad_w.const_data_ptr(), v.const_data_ptr(), alpha.data(),
                      beta.data(), grad_v.mutable_data_ptr()});
  });
  return {grad_v, grad_g_acc.view(g.sizes()).to(g.scalar_type())};
}

}  // namespace
}  // namespace norm_ext

TORCH_LIBRARY_IMPL(norm_ext, CPU, m) {
  m.impl("weight_norm", &norm_ext::weight_norm_cpu);
  m.impl("weight_norm_backward", &norm_ext::weight_norm_backward_cpu);
}
