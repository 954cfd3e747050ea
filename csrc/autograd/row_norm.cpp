// Autograd of the row norms (layer_norm, rms_norm, add_layer_norm, add_rms_norm); see common.h. A
// Python formula (torch.library.register_autograd) cost a call 5-10x the forward's own host time at
// the sizes of decoding.
#include "autograd/common.h"

namespace norm_ext::autograd {
namespace {

using Tensors2 = std::tuple<Tensor, Tensor>;
using Tensors3 = std::tuple<Tensor, Tensor, Tensor>;
using Tensors4 = std::tuple<Tensor, Tensor, Tensor, Tensor>;

// The forward ops below autograd: {out, [h], [mean], rstd}, as the schema orders them.
variable_list row_norm_below_autograd(const Tensor& input, const OptTensor& residual, c10::SymIntArrayRef shape,
                                      const OptTensor& weight, const OptTensor& bias, double eps,
                                      std::optional<at::ScalarType> residual_dtype, bool zero_centered,
                                      bool memory_efficient, bool rms) {
  at::AutoDispatchBelowADInplaceOrView guard;
  if (residual.has_value() && rms) {
    static const auto op =
        op_handle<Tensors3(const Tensor&, const Tensor&, c10::SymIntArrayRef, const OptTensor&, double,
                           std::optional<at::ScalarType>, bool, bool)>("norm_ext::add_rms_norm");
    auto [y, h, rstd] = op.call(input, *residual, shape, weight, eps, residual_dtype, zero_centered, memory_efficient);
    return {y, h, rstd};
  }
  if (residual.has_value()) {
    static const auto op =
        op_handle<Tensors4(const Tensor&, const Tensor&, c10::SymIntArrayRef, const OptTensor&, const OptTensor&,
                           double, std::optional<at::ScalarType>, bool, bool)>("norm_ext::add_layer_norm");
    auto [y, h, mean, rstd] =
        op.call(input, *residual, shape, weight, bias, eps, residual_dtype, zero_centered, memory_efficient);
    return {y, h, mean, rstd};
  }
  if (rms) {
    static const auto op =
        op_handle<Tensors2(const Tensor&, c10::SymIntArrayRef, const OptTensor&, double, bool, bool)>(
            "norm_ext::rms_norm");
    auto [y, rstd] = op.call(input, shape, weight, eps, zero_centered, memory_efficient);
    return {y, rstd};
  }
  static const auto op =
      op_handle<Tensors3(const Tensor&, c10::SymIntArrayRef, const OptTensor&, const OptTensor&, double, bool, bool)>(
          "norm_ext::layer_norm");
  auto [y, mean, rstd] = op.call(input, shape, weight, bias, eps, zero_centered, memory_efficient);
  return {y, mean, rstd};
}

// Saves {the input, h of the fused ops, or the output in memory-efficient mode; mean; rstd; weight;
// bias}. Edges: input, residual, weight, bias.
class RowNormBackward : public NormNode<5> {
 public:
  int64_t norm_dims = 0;
  // The dtypes of the input and residual arguments and of h, the residual stream.
  at::ScalarType input_dtype = at::kFloat, residual_dtype = at::kFloat, stream_dtype = at::kFloat;
  bool zero_centered = false, memory_efficient = false, rms = false, fused = false;

  std::string name() const override {
    return std::string(fused ? "norm_ext::add_" : "norm_ext::") + (rms ? "rms_norm" : "layer_norm") + "_backward";
  }

 protected:
  void collect_attrs(CompiledNodeArgs& args) const override {
    args.collect(norm_dims);
    args.collect(input_dtype);
    args.collect(residual_dtype);
    args.collect(stream_dtype);
    args.collect(zero_centered);
    args.collect(memory_efficient);
    args.collect(rms);
    args.collect(fused);
  }

  variable_list backward(variable_list&& grads) override {
    const Tensor stream = saved(0);
    const Tensor mean = saved(1);
    const Tensor rstd = saved(2);
    const OptTensor weight = saved_optional(3);
    const OptTensor bias = saved_optional(4);
    const c10::SymIntArrayRef shape = stream.sym_sizes().slice(stream.dim() - norm_dims);

    // An output nobody differentiates reaches here undefined (h of the fused ops when only y is
    // used), not as zeros of its full size that the backward op would read and add.
    Tensor grad_out = grads[0];
    if (!grad_out.defined()) grad_out = at::zeros_symint(stream.sym_sizes(), stream.options().dtype(input_dtype));
    const Tensor grad_stream = fused ? grads[1] : Tensor();
    // The backward op adds grad_residual in the saved tensor's dtype; in memory-efficient mode the
    // saved tensor is the output, whose dtype can differ from the residual stream's. The choice reads
    // the dtypes of the forward, not the gradient's: compiled autograd's capture passes placeholders.
    const bool fuse_grad_stream = grad_stream.defined() && stream_dtype == stream.scalar_type();
    const OptTensor grad_residual = fuse_grad_stream ? OptTensor(grad_stream) : std::nullopt;

    Tensor grad_h, grad_weight, grad_bias;
    if (rms) {
      static const auto op =
          op_handle<Tensors2(const Tensor&, const Tensor&, c10::SymIntArrayRef, const Tensor&, const OptTensor&, bool,
                             bool, const OptTensor&)>("norm_ext::rms_norm_backward");
      std::tie(grad_h, grad_weight) =
          call_backward(op, grad_out, stream, shape, rstd, weight, zero_centered, memory_efficient, grad_residual);
    } else {
      static const auto op =
          op_handle<Tensors3(const Tensor&, const Tensor&, c10::SymIntArrayRef, const Tensor&, const Tensor&,
                             const OptTensor&, const OptTensor&, bool, bool, const OptTensor&)>(
              "norm_ext::layer_norm_backward");
      std::tie(grad_h, grad_weight, grad_bias) = call_backward(op, grad_out, stream, shape, mean, rstd, weight, bias,
                                                               zero_centered, memory_efficient, grad_residual);
    }
    if (grad_stream.defined() && !fuse_grad_stream) grad_h = as_dtype(grad_h, stream_dtype) + grad_stream;
    return {wants(0) ? as_dtype(grad_h, input_dtype) : Tensor(), wants(1) ? as_dtype(grad_h, residual_dtype) : Tensor(),
            wants(2) ? grad_weight : Tensor(), wants(3) ? grad_bias : Tensor()};
  }
};

variable_list row_norm_autograd(const Tensor& input, const OptTensor& residual, c10::SymIntArrayRef shape,
                                const OptTensor& weight, const OptTensor& bias, double eps,
                                std::optional<at::ScalarType> residual_dtype, bool zero_centered, bool memory_efficient,
                                bool rms) {
  // Nothing to differentiate (inference, no_grad): no graph node.
  if (!any_requires_grad(input, residual, weight, bias)) {
    return row_norm_below_autograd(input, residual, shape, weight, bias, eps, residual_dtype, zero_centered,
                                   memory_efficient, rms);
  }
  const bool fused = residual.has_value();
  auto node =
      make_node<RowNormBackward>(fused ? (rms ? "add_rms_norm" : "add_layer_norm") : (rms ? "rms_norm" : "layer_norm"),
                                 input, residual, weight, bias);
  variable_list outs = row_norm_below_autograd(input, residual, shape, weight, bias, eps, residual_dtype, zero_centered,
                                               memory_efficient, rms);
  // y, and h of the fused ops; the statistics are saved for the backward, never differentiated.
  if (fused) {
    set_history(node, {outs[0], outs[1]});
  } else {
    set_history(node, {outs[0]});
  }
  node->norm_dims = static_cast<int64_t>(shape.size());
  node->input_dtype = input.scalar_type();
  node->residual_dtype = fused ? residual->scalar_type() : input.scalar_type();
  node->stream_dtype = fused ? outs[1].scalar_type() : input.scalar_type();
  node->zero_centered = zero_centered;
  node->memory_efficient = memory_efficient;
  node->rms = rms;
  node->fused = fused;
  if (memory_efficient) {
    node->save(0, outs[0], /*is_output=*/true);
  } else {
    node->save(0, fused ? outs[1] : input, /*is_output=*/fused);
  }
  if (!rms) node->save(1, outs[outs.size() - 2]);
  node->save(2, outs.back());
  node->save(3, weight);
  node->save(4, bias);
  return outs;
}

Tensors3 layer_norm(const Tensor& input, c10::SymIntArrayRef shape, const OptTensor& weight, const OptTensor& bias,
                    double eps, bool zero_centered, bool memory_efficient) {
  auto r = row_norm_autograd(input, std::nullopt, shape, weight, bias, eps, std::nullopt, zero_centered,
                             memory_efficient, false);
  return {r[0], r[1], r[2]};
}

Tensors2 rms_norm(const Tensor& input, c10::SymIntArrayRef shape, const OptTensor& weight, double eps,
                  bool zero_centered, bool memory_efficient) {
  auto r = row_norm_autograd(input, std::nullopt, shape, weight, std::nullopt, eps, std::nullopt, zero_centered,
                             memory_efficient, true);
  return {r[0], r[1]};
}

Tensors4 add_layer_norm(const Tensor& input, const Tensor& residual, c10::SymIntArrayRef shape, const OptTensor& weight,
                        const OptTensor& bias, double eps, std::optional<at::ScalarType> residual_dtype,
                        bool zero_centered, bool memory_efficient) {
  auto r = row_norm_autograd(input, residual, shape, weight, bias, eps, residual_dtype, zero_centered, memory_efficient,
                             false);
  return {r[0], r[1], r[2], r[3]};
}

Tensors3 add_rms_norm(const Tensor& input, const Tensor& residual, c10::SymIntArrayRef shape, const OptTensor& weight,
                      double eps, std::optional<at::ScalarType> residual_dtype, bool zero_centered,
                      bool memory_efficient) {
  auto r = row_norm_autograd(input, residual, shape, weight, std::nullopt, eps, residual_dtype, zero_centered,
                             memory_efficient, true);
  return {r[0], r[1], r[2]};
}

}  // namespace
}  // namespace norm_ext::autograd

TORCH_LIBRARY_IMPL(norm_ext, Autograd, m) {
  m.impl("layer_norm", &norm_ext::autograd::layer_norm);
  m.impl("rms_norm", &norm_ext::autograd::rms_norm);
  m.impl("add_layer_norm", &norm_ext::autograd::add_layer_norm);
  m.impl("add_rms_norm", &norm_ext::autograd::add_rms_norm);
}
