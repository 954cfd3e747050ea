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

// What both nodes save: the forward's input, its per-channel mean and invstd, the weight and the
// padding mask (absent in training). Edges: input, weight, bias.
class BatchNormBackwardBase : public NormNode<5> {
 public:
  std::optional<at::ScalarType> bias_dtype;

  void save_batch_norm(const Tensor& input, const Tensor& mean, const Tensor& invstd, const OptTensor& weight,
                       const OptTensor& bias, const OptTensor& pad_mask) {
    save(0, input);
    save(1, mean);
    save(2, invstd);
    save(3, weight);
    save(4, pad_mask);
    if (bias.has_value() && bias->defined()) bias_dtype = bias->scalar_type();
  }

 protected:
  void collect_attrs(CompiledNodeArgs& args) const override { args.collect(bias_dtype); }

  struct Saved {
    Tensor input, mean, invstd;
    OptTensor weight, pad_mask;
  };

  Saved unpack() const { return {saved(0), saved(1), saved(2), saved_optional(3), saved_optional(4)}; }

  // The parameters' gradients are the per-channel sums: sum(dy * x_hat) for the weight, sum(dy) for the bias.
  bool wants_param_grads() const { return wants(1) || wants(2); }

  std::pair<Tensor, Tensor> param_grads(const Saved& s, const Tensor& sum_dy, const Tensor& sum_dy_xhat) const {
    return {wants(1) && s.weight.has_value() ? as_dtype(sum_dy_xhat, s.weight->scalar_type()) : Tensor(),
            wants(2) && bias_dtype.has_value() ? as_dtype(sum_dy, *bias_dtype) : Tensor()};
  }
};

Tensors2 backward_reduce(const Tensor& grad_out, const Tensor& input, const Tensor& mean, const Tensor& invstd,
                         const OptTensor& pad_mask) {
  static const auto op =
      op_handle<Tensors2(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&)>(
          "norm_ext::batch_norm_backward_reduce");
  return call_backward(op, grad_out, input, mean, invstd, pad_mask);
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

class BatchNormTrainBackward : public BatchNormBackwardBase {
 public:
  std::string name() const override { return "norm_ext::batch_norm_train_backward"; }

 protected:
  // The parameters' gradients are the per-channel sums that the input's gradient needs anyway.
  variable_list backward(variable_list&& grads) override {
    if (!grads[0].defined()) return {Tensor(), Tensor(), Tensor()};
    const Saved s = unpack();
    Tensor grad_input, sum_dy, sum_dy_xhat;
    if (wants(0)) {
      static const auto op =
          op_handle<Tensors3(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&)>(
              "norm_ext::batch_norm_train_backward");
      std::tie(grad_input, sum_dy, sum_dy_xhat) = call_backward(op, grads[0], s.input, s.mean, s.invstd, s.weight);
    } else {
      std::tie(sum_dy, sum_dy_xhat) = backward_reduce(grads[0], s.input, s.mean, s.invstd, s.pad_mask);
    }
    auto [grad_weight, grad_bias] = param_grads(s, sum_dy, sum_dy_xhat);
    return {grad_input, grad_weight, grad_bias};
  }
};

Tensors4 batch_norm_train(const Tensor& input, const OptTensor& weight, const OptTensor& bias, double eps,
                          const OptTensor& running_mean, const OptTensor& running_var, double momentum) {
  if (!any_requires_grad(input, weight, bias)) {
    return batch_norm_train_below_autograd(input, weight, bias, eps, running_mean, running_var, momentum);
  }
  auto node = make_node<BatchNormTrainBackward>("batch_norm_train", input, weight, bias);
  auto [out, mean, m2, invstd] =
      batch_norm_train_below_autograd(input, weight, bias, eps, running_mean, running_var, momentum);
  set_history(node, {out});
  node->save_batch_norm(input, mean, invstd, weight, bias, std::nullopt);
  return {out, mean, m2, invstd};
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
class BatchNormElemtBackward : public BatchNormBackwardBase {
 public:
  std::string name() const override { return "norm_ext::batch_norm_elemt_backward"; }

 protected:
  variable_list backward(variable_list&& grads) override {
    if (!grads[0].defined()) return {Tensor(), Tensor(), Tensor()};
    const Saved s = unpack();
    Tensor grad_input, grad_weight, grad_bias;
    if (wants_param_grads()) {
      auto [sum_dy, sum_dy_xhat] = backward_reduce(grads[0], s.input, s.mean, s.invstd, s.pad_mask);
      std::tie(grad_weight, grad_bias) = param_grads(s, sum_dy, sum_dy_xhat);
    }
    if (wants(0)) {
      static const auto op = op_handle<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                              const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&)>(
          "norm_ext::batch_norm_backward_elemt");
      grad_input =
          call_backward(op, grads[0], s.input, s.mean, s.invstd, s.weight, std::nullopt, std::nullopt, s.pad_mask);
    }
    return {grad_input, grad_weight, grad_bias};
  }
};

Tensor batch_norm_elemt(const Tensor& input, const Tensor& mean, const Tensor& invstd, const OptTensor& weight,
                        const OptTensor& bias, const OptTensor& pad_mask) {
  if (!any_requires_grad(input, weight, bias)) {
    return batch_norm_elemt_below_autograd(input, mean, invstd, weight, bias, pad_mask);
  }
  auto node = make_node<BatchNormElemtBackward>("batch_norm_elemt", input, weight, bias);
  Tensor out = batch_norm_elemt_below_autograd(input, mean, invstd, weight, bias, pad_mask);
  set_history(node, {out});
  node->save_batch_norm(input, mean, invstd, weight, bias, pad_mask);
  return out;
}

}  // namespace
}  // namespace norm_ext::autograd

TORCH_LIBRARY_IMPL(norm_ext, Autograd, m) {
  m.impl("batch_norm_train", &norm_ext::autograd::batch_norm_train);
  m.impl("batch_norm_elemt", &norm_ext::autograd::batch_norm_elemt);
}
