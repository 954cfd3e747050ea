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

// Saves {input, scale, weight, ema_gz, pad_mask}. Edges: input, scale (whose gradient is not
// taken, see above), weight, bias.
class PowerNormBackward : public NormNode<5> {
 public:
  double alpha_bkw = 0;
  bool has_bias = false;

  std::string name() const override { return "norm_ext::power_norm_backward"; }

 protected:
  void collect_attrs(CompiledNodeArgs& args) const override {
    args.collect(alpha_bkw);
    args.collect(has_bias);
  }

  variable_list backward(variable_list&& grads) override {
    if (!grads[0].defined()) return {Tensor(), Tensor(), Tensor(), Tensor()};
    static const auto op = op_handle<std::tuple<Tensor, Tensor, Tensor>(
        const Tensor&, const Tensor&, const Tensor&, const OptTensor&, Tensor&, const OptTensor&, double, bool)>(
        "norm_ext::power_norm_backward");
    const OptTensor weight = saved_optional(2);
    Tensor ema_gz = saved(3);
    auto [grad_input, grad_weight, grad_bias] =
        op.call(grads[0], saved(0), saved(1), weight, ema_gz, saved_optional(4), alpha_bkw, has_bias);
    return {grad_input, Tensor(), weight.has_value() ? grad_weight : Tensor(), has_bias ? grad_bias : Tensor()};
  }
};

Tensor power_norm(const Tensor& input, const Tensor& scale, const OptTensor& weight, const OptTensor& bias,
                  const Tensor& ema_gz, const OptTensor& pad_mask, double alpha_bkw) {
  if (!any_requires_grad(input, scale, weight, bias)) {
    return power_norm_below_autograd(input, scale, weight, bias, ema_gz, pad_mask, alpha_bkw);
  }
  auto node = make_node<PowerNormBackward>("power_norm", input, scale, weight, bias);
  Tensor out = power_norm_below_autograd(input, scale, weight, bias, ema_gz, pad_mask, alpha_bkw);
  set_history(node, {out});
  node->alpha_bkw = alpha_bkw;
  node->has_bias = bias.has_value();
  node->save(0, input);
  node->save(1, scale);
  node->save(2, weight);
  node->save(3, ema_gz);
  node->save(4, pad_mask);
  return out;
}

}  // namespace
}  // namespace norm_ext::autograd

TORCH_LIBRARY_IMPL(norm_ext, Autograd, m) {
  m.impl("power_norm", &norm_ext::autograd::power_norm);
}
