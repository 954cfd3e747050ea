// CPU backend of GroupNorm (and of InstanceNorm, which is GroupNorm with G = C), with an optional
// fused SiLU on the output; the checks and allocation are the shared glue of ops/group_norm.h. The
// backend converts the parameters to the accumulation type; the kernels themselves are in
// group_norm_kernel_impl.h, compiled once per instruction set (see isa.h).

#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu/backend.h"
#include "cpu/group_norm_kernel.h"
#include "ops/group_norm.h"

namespace norm_ext {
namespace {

using cpu::acc_grad;
using cpu::copy_back;
using cpu::data_or_null;
using cpu::mutable_data_or_null;
using cpu::param_as_acc;

struct CpuGroupNorm {
  static constexpr c10::DeviceType kDevice = c10::DeviceType::CPU;
  using Guard = NoDeviceGuard;

  static void forward(const GroupNormFwdCall& c) {
    const at::ScalarType acc = stat_dtype(c.input.scalar_type());
    const at::Tensor w = param_as_acc(c.weight, acc);
    const at::Tensor b = param_as_acc(c.bias, acc);
    cpu::group_norm_fwd({c.input.scalar_type(), c.input.const_data_ptr(), c.out.mutable_data_ptr(),
                         c.mean.mutable_data_ptr(), c.rstd.mutable_data_ptr(), data_or_null(w), data_or_null(b),
                         c.shape, c.eps, c.silu});
  }

  static void backward(const GroupNormBwdCall& c) {
    const at::ScalarType acc = stat_dtype(c.input.scalar_type());
    const at::Tensor w = param_as_acc(c.weight, acc);
    const at::Tensor b = param_as_acc(c.bias, acc);
    const at::Tensor dw = acc_grad(c.grad_weight, acc);
    const at::Tensor db = acc_grad(c.grad_bias, acc);
    cpu::group_norm_bwd({c.input.scalar_type(), c.grad_out.const_data_ptr(), c.input.const_data_ptr(),
                         c.grad_input.mutable_data_ptr(), c.mean.const_data_ptr(), c.rstd.const_data_ptr(),
                         data_or_null(w), data_or_null(b), mutable_data_or_null(dw), mutable_data_or_null(db), c.shape,
                         c.silu});
    copy_back(dw, c.grad_weight);
    copy_back(db, c.grad_bias);
  }
};

}  // namespace
}  // namespace norm_ext

TORCH_LIBRARY_IMPL(norm_ext, CPU, m) {
  norm_ext::register_group_norm_ops<norm_ext::CpuGroupNorm>(m);
}
