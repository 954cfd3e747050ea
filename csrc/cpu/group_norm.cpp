// CPU backend of GroupNorm (and of InstanceNorm, which is GroupNorm with G = C), with an optional
// fused SiLU on the output; the checks and allocation are the shared glue of ops/group_norm.h. The
// backend converts the parameters to the accumulation type; the kernels themselves are in
// group_norm_kernel_impl.h, compiled once per instruction set (see isa.h).

#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu/backend.h"
#include "cpu/kernels.h"
#include "ops/group_norm.h"

namespace norm_ext {
namespace {

struct CpuGroupNorm {
  static constexpr c10::DeviceType kDevice = c10::DeviceType::CPU;
  using Guard = NoDeviceGuard;

  static void forward(const GroupNormFwdCall& c) {
    const at::ScalarType acc = stat_dtype(c.input.scalar_type());
    const at::Tensor w = cpu::param_as_acc(c.weight, acc);
    const at::Tensor b = cpu::param_as_acc(c.bias, acc);
    cpu::group_norm_fwd({c.input.scalar_type(), c.input.const_data_ptr(), c.out.mutable_data_ptr(),
                         c.mean.mutable_data_ptr(), c.rstd.mutable_data_ptr(), cpu::data_or_null(w),
                         cpu::data_or_null(b), c.shape, c.eps, c.silu});
  }

  static void backward(const GroupNormBwdCall& c) {
    const at::ScalarType acc = stat_dtype(c.input.scalar_type());
    const at::Tensor w = cpu::param_as_acc(c.weight, acc);
    const at::Tensor b = cpu::param_as_acc(c.bias, acc);
    const at::Tensor dw = cpu::acc_grad(c.grad_weight, acc);
    const at::Tensor db = cpu::acc_grad(c.grad_bias, acc);
    cpu::group_norm_bwd({c.input.scalar_type(), c.grad_out.const_data_ptr(), c.input.const_data_ptr(),
                         c.grad_input.mutable_data_ptr(), c.mean.const_data_ptr(), c.rstd.const_data_ptr(),
                         cpu::data_or_null(w), cpu::data_or_null(b), cpu::mutable_data_or_null(dw),
                         cpu::mutable_data_or_null(db), c.shape, c.silu});
    cpu::copy_back(dw, c.grad_weight);
    cpu::copy_back(db, c.grad_bias);
  }
};

}  // namespace
}  // namespace norm_ext

TORCH_LIBRARY_IMPL(norm_ext, CPU, m) {
  norm_ext::register_group_norm_ops<norm_ext::CpuGroupNorm>(m);
}
