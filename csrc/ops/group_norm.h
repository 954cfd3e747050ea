#pragma once
// Op glue of GroupNorm (InstanceNorm is GroupNorm with G = C), shared by every backend: checks, the
// memory format, allocation and empty inputs. A backend supplies kDevice, Guard and
//   static void forward(const GroupNormFwdCall&);
//   static void backward(const GroupNormBwdCall&);

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <tuple>

#include "common/group_norm.h"
#include "ops/common.h"

namespace norm_ext {

// Tensors in the layout `shape` describes; weight / bias (undefined when absent) contiguous.
struct GroupNormFwdCall {
  const at::Tensor& input;
  const at::Tensor& weight;
  const at::Tensor& bias;
  const at::Tensor& out;
  const at::Tensor& mean;
  const at::Tensor& rstd;
  GroupNormShape shape;
  double eps;
  bool silu;
};

// grad_weight / grad_bias are allocated in the parameters' dtype where wanted (undefined otherwise).
struct GroupNormBwdCall {
  const at::Tensor& grad_out;
  const at::Tensor& input;
  const at::Tensor& mean;
  const at::Tensor& rstd;
  const at::Tensor& weight;
  const at::Tensor& bias;
  const at::Tensor& grad_input;
  const at::Tensor& grad_weight;
  const at::Tensor& grad_bias;
  GroupNormShape shape;
  bool silu;
};

template <typename Backend>
struct GroupNormOps {
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> forward(const at::Tensor& input_, int64_t num_groups,
                                                                const std::optional<at::Tensor>& weight,
                                                                const std::optional<at::Tensor>& bias, double eps,
                                                                std::optional<c10::string_view> activation) {
    constexpr const char* op = "group_norm";
    const GroupNormShape s = check_group_norm_inputs(op, input_, num_groups, weight, bias, eps);
    const bool silu = parse_group_norm_activation(op, activation);
    check_device_type(op, input_, Backend::kDevice);
    const typename Backend::Guard guard(input_.device());
    const at::MemoryFormat format = group_norm_memory_format(input_);
    const at::Tensor input = input_.contiguous(format);
    const auto stat_opts = input.options().dtype(stat_dtype(input.scalar_type()));
    at::Tensor out = at::empty(input.sizes(), input.options().memory_format(format));
    at::Tensor mean = at::empty({s.n, s.groups}, stat_opts);
    at::Tensor rstd = at::empty({s.n, s.groups}, stat_opts);
    if (input.numel() == 0) {
      mean.zero_();
      rstd.fill_(1.0 / std::sqrt(eps));
      return {out, mean, rstd};
    }
    Backend::forward(
        {input, contiguous_or_undefined(weight), contiguous_or_undefined(bias), out, mean, rstd, s, eps, silu});
    return {out, mean, rstd};
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(const at::Tensor& grad_out_, const at::Tensor& input_,
                                                                 int64_t num_groups, const at::Tensor& mean,
                                                                 const at::Tensor& rstd,
                                                                 const std::optional<at::Tensor>& weight,
                                                                 const std::optional<at::Tensor>& bias,
                                                                 std::optional<c10::string_view> activation) {
    constexpr const char* op = "group_norm_backward";
    const GroupNormShape s =
        check_group_norm_backward_inputs(op, grad_out_, input_, num_groups, mean, rstd, weight, bias);
    const bool silu = parse_group_norm_activation(op, activation);
    check_device_type(op, input_, Backend::kDevice);
    const typename Backend::Guard guard(input_.device());
    const at::MemoryFormat format = group_norm_memory_format(input_);
    const at::Tensor input = input_.contiguous(format);
    const at::Tensor grad_out = grad_out_.contiguous(format);
    const at::Tensor w = contiguous_or_undefined(weight);
    const at::Tensor b = contiguous_or_undefined(bias);
    at::Tensor grad_input = at::empty(input.sizes(), input.options().memory_format(format));
    const bool empty = input.numel() == 0;
    const auto make_grad = [&](const at::Tensor& p) {
      if (!p.defined()) return at::Tensor();
      return empty ? at::zeros({s.c}, p.options()) : at::empty({s.c}, p.options());
    };
    at::Tensor grad_weight = make_grad(w);
    at::Tensor grad_bias = make_grad(b);
    if (!empty) {
      Backend::backward(
          {grad_out, input, mean.contiguous(), rstd.contiguous(), w, b, grad_input, grad_weight, grad_bias, s, silu});
    }
    const at::Tensor none = at::empty({0}, input.options());
    return {grad_input, grad_weight.defined() ? grad_weight : none, grad_bias.defined() ? grad_bias : none};
  }
};

template <typename Backend>
void register_group_norm_ops(torch::Library& m) {
  m.impl("group_norm", &GroupNormOps<Backend>::forward);
  m.impl("group_norm_backward", &GroupNormOps<Backend>::backward);
}

}  // namespace norm_ext
