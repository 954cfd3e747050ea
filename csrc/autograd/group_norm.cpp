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

// Saves {input, mean, rstd, weight, bias}. Edges: input, weight, bias.
class GroupNormBackward : public NormNode<5> {
 public:
  int64_t num_groups = 0;
  std::optional<std::string> activation;

  std::string name() const override { return "norm_ext::group_norm_backward"; }

 protected:
  void collect_attrs(CompiledNodeArgs& args) const override {
    args.collect(num_groups);
    args.collect(activation.value_or(std::string()));
  }

  variable_list backward(variable_list&& grads) override {
    if (!grads[0].defined()) return {Tensor(), Tensor(), Tensor()};
    static const auto op =
        op_handle<GroupNormOutputs(const Tensor&, const Tensor&, int64_t, const Tensor&, const Tensor&,
                                   const OptTensor&, const OptTensor&, std::optional<c10::string_view>)>(
            "norm_ext::group_norm_backward");
    const OptTensor weight = saved_optional(3);
    const OptTensor bias = saved_optional(4);
    auto [grad_input, grad_weight, grad_bias] =
        call_backward(op, grads[0], saved(0), num_groups, saved(1), saved(2), weight, bias,
                      activation.has_value() ? std::optional<c10::string_view>(*activation) : std::nullopt);
    return {wants(0) ? grad_input : Tensor(), wants(1) ? grad_weight : Tensor(), wants(2) ? grad_bias : Tensor()};
  }
};

GroupNormOutputs group_norm(const Tensor& input, int64_t num_groups, const OptTensor& weight, const OptTensor& bias,
                            double eps, std::optional<c10::string_view> activation) {
  if (!any_requires_grad(input, weight, bias)) {
    return group_norm_below_autograd(input, num_groups, weight, bias, eps, activation);
  }
  auto node = make_node<GroupNormBackward>("group_norm", input, weight, bias);
  auto [out, mean, rstd] = group_norm_below_autograd(input, num_groups, weight, bias, eps, activation);
  set_history(node, {out});
  node->num_groups = num_groups;
  if (activation.has_value()) node->activation = std::string(*activation);
  node->save(0, input);
  node->save(1, mean);
  node->save(2, rstd);
  node->save(3, weight);
  node->save(4, bias);
  return {out, mean, rstd};
}

}  // namespace
}  // namespace norm_ext::autograd

TORCH_LIBRARY_IMPL(norm_ext, Autograd, m) {
  m.impl("group_norm", &norm_ext::autograd::group_norm);
}
