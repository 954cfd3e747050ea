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

// Saves {v, g, norm}. Edges: v, g.
class WeightNormBackward : public NormNode<3> {
 public:
  std::optional<int64_t> dim;

  std::string name() const override { return "norm_ext::weight_norm_backward"; }

 protected:
  void collect_attrs(CompiledNodeArgs& args) const override { args.collect(dim); }

  variable_list backward(variable_list&& grads) override {
    if (!grads[0].defined()) return {Tensor(), Tensor()};
    static const auto op =
        op_handle<Tensors2(const Tensor&, const Tensor&, const Tensor&, const Tensor&, std::optional<int64_t>)>(
            "norm_ext::weight_norm_backward");
    auto [grad_v, grad_g] = call_backward(op, grads[0], saved(0), saved(1), saved(2), dim);
    return {grad_v, grad_g};
  }
};

Tensors2 weight_norm(const Tensor& v, const Tensor& g, std::optional<int64_t> dim) {
  if (!any_requires_grad(v, g)) return weight_norm_below_autograd(v, g, dim);
  auto node = make_node<WeightNormBackward>("weight_norm", v, g);
  auto [w, norm] = weight_norm_below_autograd(v, g, dim);
  set_history(node, {w});
  node->dim = dim;
  node->save(0, v);
  node->save(1, g);
  node->save(2, norm);
  return {w, norm};
}

}  // namespace
}  // namespace norm_ext::autograd

TORCH_LIBRARY_IMPL(norm_ext, Autograd, m) {
  m.impl("weight_norm", &norm_ext::autograd::weight_norm);
}
