// Autograd of group_norm (GroupNorm and InstanceNorm, optionally with a fused SiLU); see common.h.
#include "autograd/common.h"

namespace norm_ext::autograd {
namespace {

using GroupNormOutputs = std::tuple<Tensor, Tensor, Tensor>;

GroupNormOutputs group_norm_below_autograd(const Tensor& input, int64_t num_groups, const OptTensor& weight,
                                           const OptTensor& bias, double eps,
                                           const std::optional<c10::string_view>& activation) {
  static const auto op = op_handle<GroupNormOutputs(const Tensor&, int64_t, const OptTensor&, const OptTensor&, double,
                                                    std::optional<c10::string_view>)>("norm_ext::group_norm");
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(input, num_groups, weight, bias, eps, activation);
}

class GroupNormFunction : public torch::autograd::Function<GroupNormFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& input, int64_t num_groups, const OptTensor& weight,
                               const OptTensor& bias, double eps, const std::optional<c10::string_view>& activation) {
    auto [out, mean, rstd] = group_norm_below_autograd(input, num_groups, weight, bias, eps, activation);
    ctx->mark_non_differentiable({mean, rstd});
    ctx->save_for_backward({input, mean, rstd, weight.value_or(Tensor()), bias.value_or(Tensor())});
    ctx->saved_data["num_groups"] = num_groups;
    if (activation.has_value()) ctx->saved_data["activation"] = std::string(*activation);
    return {out, mean, rstd};
  }

  // One gradient per argument of forward: input, num_groups, weight, bias, eps, activation.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op =
        op_handle<GroupNormOutputs(const Tensor&, const Tensor&, int64_t, const Tensor&, const Tensor&,
                                   const OptTensor&, const OptTensor&, std::optional<c10::string_view>)>(
            "norm_ext::group_norm_backward");
    const variable_list saved = ctx->get_saved_variables();
    const Tensor& input = saved[0];
    const OptTensor weight = optional_of(saved[3]);
    const OptTensor bias = optional_of(saved[4]);
    std::optional<std::string> activation;
    if (ctx->saved_data.count("activation") != 0) activation = ctx->saved_data["activation"].toStringRef();
    auto [grad_input, grad_weight, grad_bias] =
        call_backward(op, grads[0], input, ctx->saved_data["num_groups"].toInt(), saved[1], saved[2], weight, bias,
                      activation.has_value() ? std::optional<c10::string_view>(*activation) : std::nullopt);
    return {grad_input, Tensor(), weight.has_value() ? grad_weight : Tensor(), bias.has_value() ? grad_bias : Tensor(),
            Tensor(),   Tensor()};
  }
};

GroupNormOutputs group_norm(const Tensor& input, int64_t num_groups, const OptTensor& weight, const OptTensor& bias,
                            double eps, std::optional<c10::string_view> activation) {
  if (!any_requires_grad(input, weight, bias)) {
    return group_norm_below_autograd(input, num_groups, weight, bias, eps, activation);
  }
  auto r = GroupNormFunction::apply(input, num_groups, weight, bias, eps, activation);
  return {r[0], r[1], r[2]};
}

}  // namespace
}  // namespace norm_ext::autograd

TORCH_LIBRARY_IMPL(norm_ext, Autograd, m) {
  m.impl("group_norm", &norm_ext::autograd::group_norm);
}
