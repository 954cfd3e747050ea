// CPU backend of weight normalization (w = g * v / ||v||); the checks and allocation are the shared
// glue of ops/weight_norm.h, the per-slice reductions and element-wise passes are in
// weight_norm_kernel_impl.h.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "cpu/kernels.h"
#include "ops/weight_norm.h"

namespace norm_ext {
namespace {

cpu::WeightNormLayout layout_of(const WeightNormShape& s) {
  return {s.outer, s.slices, s.inner};
}

// dim=0 (outer == 1), with a slice for every thread: each row is finished while it is in cache.
bool use_row_kernels(const WeightNormShape& s) {
  return s.outer == 1 && s.slices >= at::get_num_threads();
}

struct CpuWeightNorm {
  static constexpr c10::DeviceType kDevice = c10::DeviceType::CPU;
  using Guard = NoDeviceGuard;

  static void forward(const WeightNormFwdCall& c) {
    const WeightNormShape& shape = c.shape;
    if (use_row_kernels(shape)) {
      cpu::weight_norm_rows_fwd({c.v.scalar_type(), shape.slices, shape.inner, c.v.const_data_ptr(),
                                 c.g.const_data_ptr(), c.w.mutable_data_ptr(), c.norm.mutable_data_ptr()});
      return;
    }
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.v.scalar_type(), "weight_norm_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      acc_t* norm = c.norm.mutable_data_ptr<acc_t>();
      cpu::slice_dots({c.v.scalar_type(), layout_of(shape), c.v.const_data_ptr(), c.v.const_data_ptr(), norm});
      std::vector<acc_t> alpha(shape.slices);
      const acc_t* g = c.g.const_data_ptr<acc_t>();
      for (int64_t d = 0; d < shape.slices; ++d) {
        norm[d] = std::sqrt(norm[d]);
        alpha[d] = g[d] / norm[d];
      }
      cpu::slice_axpby({c.v.scalar_type(), layout_of(shape), c.v.const_data_ptr(), nullptr, alpha.data(), nullptr,
                        c.w.mutable_data_ptr()});
    });
  }

  static void backward(const WeightNormBwdCall& c) {
    const WeightNormShape& shape = c.shape;
    if (use_row_kernels(shape)) {
      cpu::weight_norm_rows_bwd({c.v.scalar_type(), shape.slices, shape.inner, c.grad_w.const_data_ptr(),
                                 c.v.const_data_ptr(), c.g.const_data_ptr(), c.norm.const_data_ptr(),
                                 c.grad_v.mutable_data_ptr(), c.grad_g.mutable_data_ptr()});
      return;
    }
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.v.scalar_type(), "weight_norm_backward_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      std::vector<acc_t> dots(shape.slices), alpha(shape.slices), beta(shape.slices);
      cpu::slice_dots(
          {c.v.scalar_type(), layout_of(shape), c.grad_w.const_data_ptr(), c.v.const_data_ptr(), dots.data()});
      const acc_t* g = c.g.const_data_ptr<acc_t>();
      const acc_t* n = c.norm.const_data_ptr<acc_t>();
      acc_t* grad_g = c.grad_g.mutable_data_ptr<acc_t>();
      for (int64_t d = 0; d < shape.slices; ++d) {
        const acc_t inv_n = acc_t(1) / n[d];
        grad_g[d] = dots[d] * inv_n;
        alpha[d] = g[d] * inv_n;
        beta[d] = alpha[d] * dots[d] * inv_n * inv_n;
      }
      cpu::slice_axpby({c.v.scalar_type(), layout_of(shape), c.grad_w.const_data_ptr(), c.v.const_data_ptr(),
                        alpha.data(), beta.data(), c.grad_v.mutable_data_ptr()});
    });
  }
};

}  // namespace
}  // namespace norm_ext

TORCH_LIBRARY_IMPL(norm_ext, CPU, m) {
  norm_ext::register_weight_norm_ops<norm_ext::CpuWeightNorm>(m);
}
