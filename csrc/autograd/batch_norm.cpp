// Autograd of batch_norm_train, the training forward of a BatchNorm that merges its statistics with
// no other rank and masks no rows (norm_ext/functional.py composes the other cases from the
// statistics and element-wise ops in Python, where the collectives are), and of batch_norm_elemt,
// which eval mode normalizes with; see common.h.
#include "autograd/common.h"

namespace norm_ext::autograd {
namespace {

using Tensors2 = std::tuple<Tensor, Tensor>;
using Tensors3 = std::tuple<Tensor, Tensor, Tensor>;
using Tensors4 = std::tuple<Tensor, Tensor, Tensor, Tensor>;

// What both formulas save: the forward's input, its per-channel mean and invstd, the weight and the
// padding mask (absent in training), and whether a bias was given and its dtype.
void save_batch_norm(AutogradContext* ctx, const Tensor& input, const Tensor& mean, const Tensor& invstd,
                     const OptTensor& weight, const OptTensor& bias, const OptTensor& pad_mask) {
  ctx->save_for_backward({input, mean, invstd, weight.value_or(Tensor()), pad_mask.value_or(Tensor())});
  ctx->saved_data["bias_dtype"] =
      bias.has_value() && bias->defined() ? std::optional<at::ScalarType>(bias->scalar_type()) : std::nullopt;
}

struct SavedBatchNorm {
  Tensor input, mean, invstd;
  OptTensor weight, pad_mask;
  std::optional<at::ScalarType> bias_dtype;
};

SavedBatchNorm unpack_batch_norm(AutogradContext* ctx) {
  const variable_list saved = ctx->get_saved_variables();
  const c10::IValue bias_dtype = ctx->saved_data["bias_dtype"];
  return {saved[0],
          saved[1],
          saved[2],
          optional_of(saved[3]),
          optional_of(saved[4]),
          bias_dtype.isNone() ? std::nullopt : std::optional<at::ScalarType>(bias_dtype.toScalarType())};
}

// needs_input_grad counts the tensors that were passed: the weight's index is `weight_index` when it
// was given, and the bias's follows it (or takes its place).
bool wants_weight(AutogradContext* ctx, const SavedBatchNorm& s, int weight_index) {
  return s.weight.has_value() && ctx->needs_input_grad(weight_index);
}

bool wants_bias(AutogradContext* ctx, const SavedBatchNorm& s, int weight_index) {
  return s.bias_dtype.has_value() && ctx->needs_input_grad(s.weight.has_value() ? weight_index + 1 : weight_index);
}

// The parameters' gradients are the per-channel sums: sum(dy * x_hat) for the weight, sum(dy) for the bias.
std::pair<Tensor, Tensor> param_grads(AutogradContext* ctx, const SavedBatchNorm& s, int weight_index,
                                      const Tensor& sum_dy, const Tensor& sum_dy_xhat) {
  return {wants_weight(ctx, s, weight_index) ? as_dtype(sum_dy_xhat, s.weight->scalar_type()) : Tensor(),
          wants_bias(ctx, s, weight_index) ? as_dtype(sum_dy, *s.bias_dtype) : Tensor()};
}

Tensors2 backward_reduce(const Tensor& grad_out, const SavedBatchNorm& s) {
  static const auto op =
      op_handle<Tensors2(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&)>(
          "norm_ext::batch_norm_backward_reduce");
  return call_backward(op, grad_out, s.input, s.mean, s.invstd, s.pad_mask);
}

Tensors4 batch_norm_train_below_autograd(const Tensor& input, const OptTensor& weight, const OptTensor& bias,
                                         double eps, const OptTensor& running_mean, const OptTensor& running_var,
                                         double momentum) {
  static const auto op = op_handle<Tensors4(const Tensor&, const OptTensor&, const OptTensor&, double, const OptTensor&,
                                            const OptTensor&, double)>("norm_ext::batch_norm_train");
  Tensors4 result;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    result = op.call(input, weight, bias, eps, running_mean, running_var, momentum);
  }
  // Below autograd the ADInplaceOrView kernel that would count the writes is skipped: count them here.
  for (const OptTensor& written : {running_mean, running_var}) {
    if (written.has_value() && written->defined()) torch::autograd::impl::bump_version(*written);
  }
  return result;
}

class BatchNormTrainFunction : public torch::autograd::Function<BatchNormTrainFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const OptTensor& weight,
                               const OptTensor& bias, double eps, const OptTensor& running_mean,
                               const OptTensor& running_var, double momentum) {
    auto [out, mean, m2, invstd] =
        batch_norm_train_below_autograd(input, weight, bias, eps, running_mean, running_var, momentum);
    ctx->mark_non_differentiable({mean, m2, invstd});
    save_batch_norm(ctx, input, mean, invstd, weight, bias, std::nullopt);
    return {out, mean, m2, invstd};
  }

  // One gradient per argument of forward: input, weight, bias, eps, running_mean, running_var,
  // momentum. The parameters' gradients are the per-channel sums that the input's gradient needs anyway.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const SavedBatchNorm s = unpack_batch_norm(ctx);
    Tensor grad_input, sum_dy, sum_dy_xhat;
    if (ctx->needs_input_grad(0)) {
      static const auto op =
          op_handle<Tensors3(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&)>(
              "norm_ext::batch_norm_train_backward");
      std::tie(grad_input, sum_dy, sum_dy_xhat) = call_backward(op, grads[0], s.input, s.mean, s.invstd, s.weight);
    } else {
      std::tie(sum_dy, sum_dy_xhat) = backward_reduce(grads[0], s);
    }
    auto [grad_weight, grad_bias] = param_grads(ctx, s, 1, sum_dy, sum_dy_xhat);
    return {grad_input, grad_weight, grad_bias, Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

Tensors4 batch_norm_train(const Tensor& input, const OptTensor& weight, const OptTensor& bias, double eps,
                          const OptTensor& running_mean, const OptTensor& running_var, double momentum) {
  if (!any_requires_grad(input, weight, bias)) {
    return batch_norm_train_below_autograd(input, weight, bias, eps, running_mean, running_var, momentum);
  }
  auto r = BatchNormTrainFunction::apply(input, weight, bias, eps, running_mean, running_var, momentum);
  return {r[0], r[1], r[2], r[3]};
}

Tensor batch_norm_elemt_below_autograd(const Tensor& input, const Tensor& mean, const Tensor& invstd,
                                       const OptTensor& weight, const OptTensor& bias, const OptTensor& pad_mask) {
  static const auto op = op_handle<Tensor(const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
                                          const OptTensor&, const OptTensor&)>("norm_ext::batch_norm_elemt");
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(input, mean, invstd, weight, bias, pad_mask);
}

// Normalization by statistics that are not functions of the input (eval mode's running statistics,
// whose gradients are not taken, as in torch): dx = weight * invstd * dy, and the parameters'
// gradients are the per-channel sums.
class BatchNormElemtFunction : public torch::autograd::Function<BatchNormElemtFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const Tensor& mean, const Tensor& invstd,
                               const OptTensor& weight, const OptTensor& bias, const OptTensor& pad_mask) {
    Tensor out = batch_norm_elemt_below_autograd(input, mean, invstd, weight, bias, pad_mask);
    save_batch_norm(ctx, input, mean, invstd, weight, bias, pad_mask);
    return {out};
  }

  // One gradient per argument of forward: input, mean, invstd, weight, bias, pad_mask.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const SavedBatchNorm s = unpack_batch_norm(ctx);
    Tensor grad_input, grad_weight, grad_bias;
    if (wants_weight(ctx, s, 3) || wants_bias(ctx, s, 3)) {
      auto [sum_dy, sum_dy_xhat] = backward_reduce(grads[0], s);
      std::tie(grad_weight, grad_bias) = param_grads(ctx, s, 3, sum_dy, sum_dy_xhat);
    }
    if (ctx->needs_input_grad(0)) {
      static const auto op = op_handle<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                              const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&)>(
          "norm_ext::batch_norm_backward_elemt");
      grad_input =
          call_backward(op, grads[0], s.input, s.mean, s.invstd, s.weight, std::nullopt, std::nullopt, s.pad_mask);
    }
    return {grad_input, Tensor(), Tensor(), grad_weight, grad_bias, Tensor()};
  }
};

Tensor batch_norm_elemt(const Tensor& input, const Tensor& mean, const Tensor& invstd, const OptTensor& weight,
                        const OptTensor& bias, const OptTensor& pad_mask) {
  if (!any_requires_grad(input, weight, bias)) {
    return batch_norm_elemt_below_autograd(input, mean, invstd, weight, bias, pad_mask);
  }
  return BatchNormElemtFunction::apply(input, mean, invstd, weight, bias, pad_mask)[0];
}

}  // namespace
}  // namespace norm_ext::autograd

TORCH_LIBRARY_IMPL(norm_ext, Autograd, m) {
  m.impl("batch_norm_train", &norm_ext::autograd::batch_norm_train);
  m.impl("batch_norm_elemt", &norm_ext::autograd::batch_norm_elemt);
}
