// CPU backend of the row-norm family (LayerNorm and RMSNorm, plain and with a fused residual add); the
// checks and allocation are the shared glue of ops/row_norm.h. The backend converts the affine
// parameters to the accumulation type once per call (which also applies the zero-centred 1 + w
// offset and keeps the parameter dtype out of the kernel templates); the kernels themselves are in
// row_norm_kernel_impl.h.

#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu/backend.h"
#include "cpu/kernels.h"
#include "ops/row_norm.h"

namespace norm_ext {
namespace {

struct CpuRowNorm {
  static constexpr c10::DeviceType kDevice = c10::DeviceType::CPU;
  using Guard = NoDeviceGuard;

  static void forward(const RowNormFwdCall& c) {
    const at::ScalarType acc = stat_dtype(c.input.scalar_type());
    const at::Tensor w = cpu::param_as_acc(c.weight, acc, c.zero_centered);
    const at::Tensor b = cpu::param_as_acc(c.bias, acc);
    const at::ScalarType h_dtype = c.residual.defined() ? c.residual.scalar_type() : c.input.scalar_type();
    cpu::row_norm_fwd({c.input.scalar_type(), h_dtype, c.input.const_data_ptr(), cpu::data_or_null(c.residual),
                       cpu::mutable_data_or_null(c.residual_out), c.out.mutable_data_ptr(),
                       cpu::mutable_data_or_null(c.mean), c.rstd.mutable_data_ptr(), cpu::data_or_null(w),
                       cpu::data_or_null(b), c.shape.rows, c.shape.cols, c.eps, c.rms});
  }

  static void backward(const RowNormBwdCall& c) {
    const at::ScalarType acc = stat_dtype(c.grad_out.scalar_type());
    const at::Tensor w = cpu::param_as_acc(c.weight, acc, c.zero_centered);
    const at::Tensor b = cpu::param_as_acc(c.bias, acc);
    const at::Tensor dw = cpu::acc_grad(c.grad_weight, acc);
    const at::Tensor db = cpu::acc_grad(c.grad_bias, acc);
    cpu::row_norm_bwd({c.grad_out.scalar_type(), c.saved.scalar_type(), c.grad_out.const_data_ptr(),
                       c.saved.const_data_ptr(), cpu::data_or_null(c.grad_residual), c.grad_input.mutable_data_ptr(),
                       cpu::data_or_null(c.mean), c.rstd.const_data_ptr(), cpu::data_or_null(w), cpu::data_or_null(b),
                       cpu::mutable_data_or_null(dw), cpu::mutable_data_or_null(db), c.shape.rows, c.shape.cols,
                       c.saved_is_output, c.rms});
    cpu::copy_back(dw, c.grad_weight);
    cpu::copy_back(db, c.grad_bias);
  }
};

}  // namespace
}  // namespace norm_ext

TORCH_LIBRARY_IMPL(norm_ext, CPU, m) {
  norm_ext::register_row_norm_ops<norm_ext::CpuRowNorm>(m);
}
