#pragma once
// GPU backend of the batch-norm family: the plans of plans/batch_norm.h launched with the kernels of
// batch_norm_kernels.cuh, behind the shared op glue of ops/batch_norm.h. A training step composes its
// reduction and element-wise launches; the second read of x comes from L2 only when the input fits
// it (50 MB on an H100), as no kernel keeps a channel on chip between the two passes yet.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include "cuda/batch_norm_kernels.cuh"
#include "cuda/launch.h"
#include "ops/batch_norm.h"
#include "plans/batch_norm.h"

namespace norm_ext {
inline namespace NORM_EXT_GPU_NAMESPACE {

inline plans::BnView gpu_view(const at::Tensor& input, bool channels_last) {
  const ChannelView v = bn_channel_view(input, channels_last);
  return plans::bn_kernel_view({v.channels_last, v.outer, v.channels, v.inner});
}

inline const bool* mask_ptr(const at::Tensor& mask) {
  return mask.defined() ? mask.const_data_ptr<bool>() : nullptr;
}

template <typename Reducer>
void launch_reduction(const Reducer& red, const plans::BnView& v, const bool* pad, const at::Tensor& like) {
  using State = typename Reducer::State;
  const Stream stream = current_stream();
  const plans::BnReducePlan plan = plans::plan_bn_reduce(v, device_props());
  const at::Tensor workspace =
      at::empty({v.channels * plan.splits * static_cast<int64_t>(sizeof(State))}, like.options().dtype(at::kByte));
  State* partial = reinterpret_cast<State*>(workspace.mutable_data_ptr());
  const plans::LaunchShape shape = launch_shape(plan.grid, plan.block);
  if (v.channels_last) {
    launch(reduce_channels_last_kernel<Reducer>, shape, stream, red, partial, pad, v.outer, v.channels);
  } else {
    launch(reduce_channels_first_kernel<Reducer>, shape, stream, red, partial, v.outer, v.channels, v.inner);
  }
  launch(merge_partials_kernel<Reducer>, launch_shape(plan.merge_grid, kBnThreads), stream, red,
         static_cast<const State*>(partial), plan.splits, v.channels);
}

struct GpuBatchNorm {
  static constexpr c10::DeviceType kDevice = kGpuDeviceType;
  using Guard = DeviceGuard;
  static constexpr bool kFusedTrain = false;

  static void stats(const BnStatsCall& c) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.input.scalar_type(), "norm_ext_batch_norm_stats", [&] {
      using acc_t = acc_type<scalar_t>;
      const StatsReducer<scalar_t> red{c.input.const_data_ptr<scalar_t>(), c.shift.const_data_ptr<acc_t>(),
                                       c.mean.mutable_data_ptr<acc_t>(), c.m2.mutable_data_ptr<acc_t>()};
      launch_reduction(red, gpu_view(c.input, c.channels_last), mask_ptr(c.mask), c.input);
    });
  }

  static void backward_reduce(const BnReduceCall& c) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, c.input.scalar_type(), "norm_ext_batch_norm_backward_reduce", [&] {
          using acc_t = acc_type<scalar_t>;
          const GradReducer<scalar_t> red{c.grad_out.const_data_ptr<scalar_t>(), c.input.const_data_ptr<scalar_t>(),
                                          c.mean.const_data_ptr<acc_t>(), c.sum_dy.mutable_data_ptr<acc_t>(),
                                          c.sum_dy_xmu.mutable_data_ptr<acc_t>()};
          launch_reduction(red, gpu_view(c.input, c.channels_last), mask_ptr(c.mask), c.input);
        });
  }

  static void affine(const BnAffineCall& c) {
    const plans::BnView v = gpu_view(c.input, c.channels_last);
    const Stream stream = current_stream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.input.scalar_type(), "norm_ext_batch_norm_elemt", [&] {
      using acc_t = acc_type<scalar_t>;
      const ChannelAffine& k = c.coefs;
      const AffineCoefs<acc_t> coefs{k.mean.const_data_ptr<acc_t>(), k.scale.const_data_ptr<acc_t>(),
                                     k.shift.const_data_ptr<acc_t>(),
                                     k.dy_scale.defined() ? k.dy_scale.const_data_ptr<acc_t>() : nullptr};
      const scalar_t* x = c.input.const_data_ptr<scalar_t>();
      const scalar_t* dy = c.grad_out.defined() ? c.grad_out.const_data_ptr<scalar_t>() : nullptr;
      scalar_t* out = c.out.mutable_data_ptr<scalar_t>();
      if (v.channels_last) {
        const plans::BnAffinePlan plan = plans::plan_bn_affine(v, 1, device_props());
        launch(affine_channels_last_kernel<scalar_t>, launch_shape(plan.grid, plan.block), stream, x, dy,
               mask_ptr(c.mask), out, coefs, v.outer, v.channels);
        return;
      }
      constexpr int kVec = vec_width_128<scalar_t>();
      const bool vectorized =
          v.inner % kVec == 0 && is_aligned<16>(x) && is_aligned<16>(out) && (dy == nullptr || is_aligned<16>(dy));
      const plans::BnAffinePlan plan = plans::plan_bn_affine(v, vectorized ? kVec : 1, device_props());
      const plans::LaunchShape shape = launch_shape(plan.grid, plan.block);
      const int64_t planes = v.outer * v.channels;
      if (vectorized) {
        launch(affine_channels_first_kernel<scalar_t, kVec>, shape, stream, x, dy, out, coefs, planes, v.channels,
               v.inner);
      } else {
        launch(affine_channels_first_kernel<scalar_t, 1>, shape, stream, x, dy, out, coefs, planes, v.channels,
               v.inner);
      }
    });
  }
};

}  // namespace NORM_EXT_GPU_NAMESPACE
}  // namespace norm_ext
