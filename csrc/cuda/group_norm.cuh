#pragma once
// GPU backend of GroupNorm: the plan of plans/group_norm.h launched with the kernels of
// group_norm_kernels.cuh (two launches forward, two or three backward), behind the glue of ops/group_norm.h.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <type_traits>

#include "cuda/group_norm_kernels.cuh"
#include "cuda/launch.h"
#include "ops/group_norm.h"
#include "plans/group_norm.h"

namespace norm_ext {
inline namespace NORM_EXT_GPU_NAMESPACE {

inline GroupGeometry make_geometry(const GroupNormShape& s, const plans::GroupNormPlan& p) {
  return {s.n,      static_cast<int>(p.tile_width), p.tiles,        s.c,         s.hw,
          s.groups, s.channels_per_group,           p.group_len,    p.chunk_len, p.chunks,
          p.items,  static_cast<int>(p.segment),    s.channels_last};
}

// Runs body(param_t{}) with param_t the parameters' dtype: the input's, or float32.
template <typename in_t, typename Body>
void dispatch_param_type(const at::Tensor& weight, const at::Tensor& bias, Body body) {
  const at::Tensor& p = weight.defined() ? weight : bias;
  if constexpr (!std::is_same_v<in_t, float> && !std::is_same_v<in_t, double>) {
    if (p.defined() && p.scalar_type() == at::kFloat) return body(float{});
  }
  body(in_t{});
}

template <typename T>
const T* param_ptr(const at::Tensor& p) {
  return p.defined() ? p.const_data_ptr<T>() : nullptr;
}

template <typename T>
T* grad_ptr(const at::Tensor& g) {
  return g.defined() ? g.mutable_data_ptr<T>() : nullptr;
}

struct GpuGroupNorm {
  static constexpr c10::DeviceType kDevice = kGpuDeviceType;
  using Guard = DeviceGuard;

  static void forward(const GroupNormFwdCall& c) {
    const plans::GroupNormPlan plan = plans::plan_group_norm(c.shape.n, c.shape.c, c.shape.hw, c.shape.groups,
                                                             c.shape.channels_last, false, device_props());
    const GroupGeometry geo = make_geometry(c.shape, plan);
    const plans::LaunchShape shape = launch_shape(plan.grid, plans::kGnThreads);
    const Stream stream = current_stream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.input.scalar_type(), "norm_ext_group_norm", [&] {
      using in_t = scalar_t;
      using acc_t = at::opmath_type<in_t>;
      const at::Tensor partials = at::empty({plan.partials * 3}, c.mean.options());
      auto* partial_ptr = reinterpret_cast<WelfordState<acc_t>*>(partials.mutable_data_ptr<acc_t>());
      launch(plan.tiled ? group_stats_tiled_kernel<in_t, acc_t> : group_stats_kernel<in_t, acc_t>, shape, stream,
             c.input.const_data_ptr<in_t>(), geo, partial_ptr);
      dispatch_param_type<in_t>(c.weight, c.bias, [&](auto param_tag) {
        using param_t = decltype(param_tag);
        launch(plan.tiled ? group_norm_apply_tiled_kernel<in_t, param_t, acc_t>
                          : group_norm_apply_kernel<in_t, param_t, acc_t>,
               shape, stream, c.input.const_data_ptr<in_t>(), param_ptr<param_t>(c.weight), param_ptr<param_t>(c.bias),
               static_cast<const WelfordState<acc_t>*>(partial_ptr), geo, static_cast<acc_t>(c.eps), c.silu,
               c.out.mutable_data_ptr<in_t>(), c.mean.mutable_data_ptr<acc_t>(), c.rstd.mutable_data_ptr<acc_t>());
      });
    });
  }

  static void backward(const GroupNormBwdCall& c) {
    const bool param_grads = c.grad_weight.defined() || c.grad_bias.defined();
    const plans::GroupNormPlan plan = plans::plan_group_norm(c.shape.n, c.shape.c, c.shape.hw, c.shape.groups,
                                                             c.shape.channels_last, param_grads, device_props());
    const GroupGeometry geo = make_geometry(c.shape, plan);
    const Stream stream = current_stream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.input.scalar_type(), "norm_ext_group_norm_bwd", [&] {
      using in_t = scalar_t;
      using acc_t = at::opmath_type<in_t>;
      // The group sums, then (with parameter gradients, not tiled) the channels' split partials.
      const int64_t split_partials = param_grads && !plan.tiled ? plan.channel_splits * c.shape.c : 0;
      const at::Tensor partials = at::empty({(plan.partials + split_partials) * 2}, c.mean.options());
      auto* partial_ptr = reinterpret_cast<Pair<acc_t>*>(partials.mutable_data_ptr<acc_t>());
      const in_t* dy = c.grad_out.const_data_ptr<in_t>();
      const in_t* x = c.input.const_data_ptr<in_t>();
      const acc_t* mean = c.mean.const_data_ptr<acc_t>();
      const acc_t* rstd = c.rstd.const_data_ptr<acc_t>();
      const plans::LaunchShape shape = launch_shape(plan.grid, plans::kGnThreads);
      dispatch_param_type<in_t>(c.weight, c.bias, [&](auto param_tag) {
        using param_t = decltype(param_tag);
        const param_t* w = param_ptr<param_t>(c.weight);
        const param_t* b = param_ptr<param_t>(c.bias);
        const Pair<acc_t>* sums = partial_ptr;
        ParamPartialLayout layout{};
        if (plan.tiled) {
          launch(group_norm_backward_tiled_kernel<in_t, param_t, acc_t>, shape, stream, dy, x, mean, rstd, w, b, geo,
                 c.silu, partial_ptr);
          launch(group_norm_grad_input_tiled_kernel<in_t, param_t, acc_t>, shape, stream, dy, x, mean, rstd, w, b, sums,
                 geo, c.silu, c.grad_input.mutable_data_ptr<in_t>());
          layout = {c.shape.n, c.shape.c * plan.chunks, plan.chunks, plan.chunks};
        } else {
          Pair<acc_t>* split_ptr = partial_ptr + plan.partials;
          launch(group_norm_backward_reduce_kernel<in_t, param_t, acc_t>,
                 launch_shape(plan.backward_grid, plans::kGnThreads), stream, dy, x, mean, rstd, w, b, geo,
                 plan.channel_items, plan.channel_blocks, plan.split_rows, c.silu, partial_ptr, split_ptr);
          launch(group_norm_grad_input_kernel<in_t, param_t, acc_t>, shape, stream, dy, x, mean, rstd, w, b, sums, geo,
                 c.silu, c.grad_input.mutable_data_ptr<in_t>());
          sums = split_ptr;
          layout = {plan.channel_splits, c.shape.c, 1, 1};
        }
        if (param_grads) {
          launch(group_norm_param_grad_fold_kernel<param_t, acc_t>, launch_shape(plan.fold_grid, plans::kGnFoldThreads),
                 stream, sums, layout, c.shape.c, grad_ptr<param_t>(c.grad_weight), grad_ptr<param_t>(c.grad_bias));
        }
      });
    });
  }
};

}  // namespace NORM_EXT_GPU_NAMESPACE
}  // namespace norm_ext
