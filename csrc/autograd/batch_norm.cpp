// Autograd of batch_norm_train, the training forward of a BatchNorm that merges its statistics with
// no other rank and masks no rows (norm_ext/functional.py composes the other cases from the
// statistics and element-wise ops in Python, where the collectives are); see common.h.
#include "autograd/common.h"

namespace norm_ext::autograd {
namespace {

using Tensors2 = std::tuple<Tensor, Tensor>;
using Tensors3 = std::tuple<Tensor, Tensor, Tensor>;
using Tensors4 = std::tuple<Tensor, Tensor, Tensor, Tensor>;

Tensors4 batch_norm_train_below_autograd(const Tensor& input, const OptTensor& weight, const OptTensor& bias,
                                         double eps) {
  static const auto op =
      op_handle<Tensors4(const Tensor&, const OptTensor&, const OptTensor&, double)>("norm_ext::batch_norm_train");
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(input, weight, bias, eps);
}

class BatchNormTrainFunction : public torch::autograd::Function<BatchNormTrainFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const OptTensor& weight,
                               const OptTensor& bias, double eps) {
    auto [out, mean, m2, invstd] = batch_norm_train_below_autograd(input, weight, bias, eps);
    ctx->mark_non_differentiable({mean, m2, invstd});
    ctx->save_for_backward({input, mean, invstd, weight.value_or(Tensor())});
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    ctx->saved_data["bias_dtype"] = bias.has_value() ? bias->scalar_type() : input.scalar_type();
    return {out, mean, m2, invstd};
  }

  // One gradient per argument of forward: input, weight, bias, eps. The parameters' gradients are
  // the per-channel sums that the input's gradient needs anyway.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const Tensor& input = saved[0];
    const Tensor& mean = saved[1];
    const Tensor& invstd = saved[2];
    const OptTensor weight = optional_of(saved[3]);
    Tensor grad_input, sum_dy, sum_dy_xhat;
    if (ctx->needs_input_grad(0)) {
      static const auto op =
          op_handle<Tensors3(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&)>(
              "norm_ext::batch_norm_train_backward");
      std::tie(grad_input, sum_dy, sum_dy_xhat) = op.call(grads[0], input, mean, invstd, weight);
    } else {
      static const auto op =
          op_handle<Tensors2(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&)>(
              "norm_ext::batch_norm_backward_reduce");
      std::tie(sum_dy, sum_dy_xhat) = op.call(grads[0], input, mean, invstd, std::nullopt);
    }
    // needs_input_grad counts the tensors that were passed: an absent weight shifts the bias's index.
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const Tensor grad_weight =
        weight.has_value() && ctx->needs_input_grad(1) ? sum_dy_xhat.to(weight->scalar_type()) : Tensor();
    const Tensor grad_bias = has_bias && ctx->needs_input_grad(weight.has_value() ? 2 : 1)
                                 ? sum_dy.to(ctx->saved_data["bias_dtype"].toScalarType())
                                 : Tensor();
    return {grad_input, grad_weight, grad_bias, Tensor()};
  }
};

Tensors4 batch_norm_train(const Tensor& input, const OptTensor& weight, const OptTensor& bias, double eps) {
  if (!any_requires_grad(input, weight, bias)) return batch_norm_train_below_autograd(input, weight, bias, eps);
  auto r = BatchNormTrainFunction::apply(input, weight, bias, eps);
  return {r[0], r[1], r[2], r[3]};
}

}  // namespace
}  // namespace norm_ext::autograd

TORCH_LIBRARY_IMPL(norm_ext, Autograd, m) {
  m.impl("batch_norm_train", &norm_ext::autograd::batch_norm_train);
}
