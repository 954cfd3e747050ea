// Autograd of weight_norm; see common.h.
#include "autograd/common.h"

namespace norm_ext::autograd {
namespace {

using Tensors2 = std::tuple<Tensor, Tensor>;

Tensors2 weight_norm_below_autograd(const Tensor& v, const Tensor& g, std::optional<int64_t> dim) {
  static const auto op =
      op_handle<Tensors2(const Tensor&, const Tensor&, std::optional<int64_t>)>("norm_ext::weight_norm");
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(v, g, dim);
}

class WeightNormFunction : public torch::autograd::Function<WeightNormFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& v, const Tensor& g, std::optional<int64_t> dim) {
    auto [w, norm] = weight_norm_below_autograd(v, g, dim);
    ctx->mark_non_differentiable({norm});
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({v, g, norm});
    if (dim.has_value()) ctx->saved_data["dim"] = *dim;
    return {w, norm};
  }

  // One gradient per argument of forward: v, g, dim.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return {Tensor(), Tensor(), Tensor()};
    static const auto op =
        op_handle<Tensors2(const Tensor&, const Tensor&, const Tensor&, const Tensor&, std::optional<int64_t>)>(
            "norm_ext::weight_norm_backward");
    const variable_list saved = ctx->get_saved_variables();
    const std::optional<int64_t> dim =
        ctx->saved_data.count("dim") != 0 ? std::optional<int64_t>(ctx->saved_data["dim"].toInt()) : std::nullopt;
    auto [grad_v, grad_g] = call_backward(op, grads[0], saved[0], saved[1], saved[2], dim);
    return {grad_v, grad_g, Tensor()};
  }
};

Tensors2 weight_norm(const Tensor& v, const Tensor& g, std::optional<int64_t> dim) {
  if (!any_requires_grad(v, g)) return weight_norm_below_autograd(v, g, dim);
  auto r = WeightNormFunction::apply(v, g, dim);
  return {r[0], r[1]};
}

}  // namespace
}  // namespace norm_ext::autograd

TORCH_LIBRARY_IMPL(norm_ext, Autograd, m) {
  m.impl("weight_norm", &norm_ext::autograd::weight_norm);
}
