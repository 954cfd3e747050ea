// CPU backend of the batch-norm family; the checks, layouts and coefficients are the shared glue of
// ops/batch_norm.h, the kernels are in batch_norm_kernel_impl.h. The CPU fuses each training step's
// two passes (batch_norm_train and its backward): a channels-first channel is normalized while it is
// still in cache, so x is read from memory once instead of twice.

#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu/backend.h"
#include "cpu/kernels.h"
#include "ops/batch_norm.h"

namespace norm_ext {
namespace {

const bool* mask_ptr(const at::Tensor& mask) {
  return mask.defined() ? mask.const_data_ptr<bool>() : nullptr;
}

cpu::BatchNormShape kernel_shape(const at::Tensor& input, bool cl) {
  const ChannelView v = bn_channel_view(input, cl);
  return {v.channels_last, v.outer, v.channels, v.inner};
}

struct CpuBatchNorm {
  static constexpr c10::DeviceType kDevice = c10::DeviceType::CPU;
  using Guard = NoDeviceGuard;
  static constexpr bool kFusedTrain = true;

  static void stats(const BnStatsCall& c) {
    cpu::batch_norm_stats({c.input.scalar_type(), kernel_shape(c.input, c.channels_last), c.input.const_data_ptr(),
                           mask_ptr(c.mask), c.shift.const_data_ptr(), c.mean.mutable_data_ptr(),
                           c.m2.mutable_data_ptr()});
  }

  static void affine(const BnAffineCall& c) {
    cpu::batch_norm_affine({c.input.scalar_type(), kernel_shape(c.input, c.channels_last), c.input.const_data_ptr(),
                            cpu::data_or_null(c.grad_out), mask_ptr(c.mask), c.out.mutable_data_ptr(),
                            c.coefs.mean.const_data_ptr(), c.coefs.scale.const_data_ptr(),
                            c.coefs.shift.const_data_ptr(), cpu::data_or_null(c.coefs.dy_scale)});
  }

  static void backward_reduce(const BnReduceCall& c) {
    cpu::batch_norm_backward_reduce({c.input.scalar_type(), kernel_shape(c.input, c.channels_last),
                                     c.grad_out.const_data_ptr(), c.input.const_data_ptr(), mask_ptr(c.mask),
                                     c.mean.const_data_ptr(), c.sum_dy.mutable_data_ptr(),
                                     c.sum_dy_xmu.mutable_data_ptr()});
  }

  static void train(const BnTrainCall& c) {
    cpu::batch_norm_train({c.input.scalar_type(), kernel_shape(c.input, c.channels_last), c.input.const_data_ptr(),
                           cpu::data_or_null(c.weight), cpu::data_or_null(c.bias), c.eps, c.out.mutable_data_ptr(),
                           c.mean.mutable_data_ptr(), c.m2.mutable_data_ptr(), c.invstd.mutable_data_ptr()});
  }

  static void train_backward(const BnTrainBackwardCall& c) {
    cpu::batch_norm_train_backward(
        {c.input.scalar_type(), kernel_shape(c.input, c.channels_last), c.grad_out.const_data_ptr(),
         c.input.const_data_ptr(), c.mean.const_data_ptr(), c.invstd.const_data_ptr(), cpu::data_or_null(c.weight),
         c.grad_input.mutable_data_ptr(), c.sum_dy.mutable_data_ptr(), c.sum_dy_xhat.mutable_data_ptr()});
  }
};

}  // namespace
}  // namespace norm_ext

TORCH_LIBRARY_IMPL(norm_ext, CPU, m) {
  norm_ext::register_batch_norm_ops<norm_ext::CpuBatchNorm>(m);
}
