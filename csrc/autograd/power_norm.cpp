// Autograd of power_norm; see common.h. The statistics (scale) are treated as constants: the
// running-Gamma correction inside the backward op stands in for their gradient, as in the paper's
// approximate backward. The backward op advances ema_gz in place.
#include "autograd/common.h"

namespace norm_ext::autograd {
namespace {

Tensor power_norm_below_autograd(const Tensor& input, const Tensor& scale, const OptTensor& weight,
                                 const OptTensor& bias, const Tensor& ema_gz, const OptTensor& pad_mask,
                                 double alpha_bkw) {
  static const auto op = op_handle<Tensor(const Tensor&, const Tensor&, const OptTensor&, const OptTensor&,
                                          const Tensor&, const OptTensor&, double)>("norm_ext::power_norm");
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(input, scale, weight, bias, ema_gz, pad_mask, alpha_bkw);
}

class PowerNormFunction : public torch::autograd::Function<PowerNormFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const Tensor& scale, const OptTensor& weight,
                               const OptTensor& bias, const Tensor& ema_gz, const OptTensor& pad_mask,
                               double alpha_bkw) {
    Tensor out = power_norm_below_autograd(input, scale, weight, bias, ema_gz, pad_mask, alpha_bkw);
    ctx->save_for_backward({input, scale, weight.value_or(Tensor()), ema_gz, pad_mask.value_or(Tensor())});
    ctx->saved_data["alpha_bkw"] = alpha_bkw;
    ctx->saved_data["has_bias"] = bias.has_value();
    return {out};
  }

  // One gradient per argument of forward: input, scale, weight, bias, ema_gz, pad_mask, alpha_bkw.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = op_handle<std::tuple<Tensor, Tensor, Tensor>(
        const Tensor&, const Tensor&, const Tensor&, const OptTensor&, Tensor&, const OptTensor&, double, bool)>(
        "norm_ext::power_norm_backward");
    variable_list saved = ctx->get_saved_variables();
    const OptTensor weight = optional_of(saved[2]);
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    auto [grad_input, grad_weight, grad_bias] =
        op.call(grads[0], saved[0], saved[1], weight, saved[3], optional_of(saved[4]),
                ctx->saved_data["alpha_bkw"].toDouble(), has_bias);
    return {
        grad_input, Tensor(), weight.has_value() ? grad_weight : Tensor(), has_bias ? grad_bias : Tensor(), Tensor(),
        Tensor(),   Tensor()};
  }
};

Tensor power_norm(const Tensor& input, const Tensor& scale, const OptTensor& weight, const OptTensor& bias,
                  const Tensor& ema_gz, const OptTensor& pad_mask, double alpha_bkw) {
  if (!any_requires_grad(input, scale, weight, bias)) {
    return power_norm_below_autograd(input, scale, weight, bias, ema_gz, pad_mask, alpha_bkw);
  }
  return PowerNormFunction::apply(input, scale, weight, bias, ema_gz, pad_mask, alpha_bkw)[0];
}

}  // namespace
}  // namespace norm_ext::autograd

TORCH_LIBRARY_IMPL(norm_ext, Autograd, m) {
  m.impl("power_norm", &norm_ext::autograd::power_norm);
}
