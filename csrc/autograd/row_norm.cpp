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

class RowNormFunction : public torch::autograd::Function<RowNormFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const OptTensor& residual,
                               c10::SymIntArrayRef shape, const OptTensor& weight, const OptTensor& bias, double eps,
                               std::optional<at::ScalarType> residual_dtype, bool zero_centered, bool memory_efficient,
                               bool rms) {
    variable_list outs = row_norm_below_autograd(input, residual, shape, weight, bias, eps, residual_dtype,
                                                 zero_centered, memory_efficient, rms);
    const bool fused = residual.has_value();
    const Tensor& rstd = outs.back();
    const Tensor mean = rms ? Tensor() : outs[outs.size() - 2];
    // The statistics are saved for the backward, never differentiated; an output nobody
    // differentiates (h of the fused ops when only y is used) reaches backward undefined instead of
    // as zeros of its full size, which the backward op would read and add.
    ctx->mark_non_differentiable(rms ? variable_list{rstd} : variable_list{mean, rstd});
    ctx->set_materialize_grads(false);
    const Tensor& stream = fused ? outs[1] : input;
    ctx->save_for_backward(
        {memory_efficient ? outs[0] : stream, mean, rstd, weight.value_or(Tensor()), bias.value_or(Tensor())});
    ctx->saved_data["norm_dims"] = static_cast<int64_t>(shape.size());
    ctx->saved_data["input_dtype"] = input.scalar_type();
    ctx->saved_data["residual_dtype"] = fused ? residual->scalar_type() : input.scalar_type();
    ctx->saved_data["flags"] = static_cast<int64_t>(zero_centered) | static_cast<int64_t>(memory_efficient) << 1 |
                               static_cast<int64_t>(rms) << 2 | static_cast<int64_t>(fused) << 3;
    return outs;
  }

  // One gradient per argument of forward: input, residual, normalized_shape, weight, bias, eps,
  // residual_dtype, zero_centered_weight, memory_efficient, rms.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved_vars = ctx->get_saved_variables();
    const Tensor& saved = saved_vars[0];
    const Tensor& mean = saved_vars[1];
    const Tensor& rstd = saved_vars[2];
    const OptTensor weight = optional_of(saved_vars[3]);
    const OptTensor bias = optional_of(saved_vars[4]);
    const int64_t flags = ctx->saved_data["flags"].toInt();
    const bool zero_centered = flags & 1, memory_efficient = flags & 2, rms = flags & 4, fused = flags & 8;
    const at::ScalarType input_dtype = ctx->saved_data["input_dtype"].toScalarType();
    const int64_t norm_dims = ctx->saved_data["norm_dims"].toInt();
    const c10::SymIntArrayRef shape = saved.sym_sizes().slice(saved.dim() - norm_dims);

    Tensor grad_out = grads[0];
    if (!grad_out.defined()) grad_out = at::zeros_symint(saved.sym_sizes(), saved.options().dtype(input_dtype));
    const Tensor grad_stream = fused ? grads[1] : Tensor();
    // The backward op adds grad_residual in the saved tensor's dtype; in memory-efficient mode the
    // saved tensor is the output, whose dtype can differ from the residual stream's.
    const bool fuse_grad_stream = grad_stream.defined() && grad_stream.scalar_type() == saved.scalar_type();
    const OptTensor grad_residual = fuse_grad_stream ? OptTensor(grad_stream) : std::nullopt;

    Tensor grad_h, grad_weight, grad_bias;
    if (rms) {
      static const auto op =
          op_handle<Tensors2(const Tensor&, const Tensor&, c10::SymIntArrayRef, const Tensor&, const OptTensor&, bool,
                             bool, const OptTensor&)>("norm_ext::rms_norm_backward");
      std::tie(grad_h, grad_weight) =
          call_backward(op, grad_out, saved, shape, rstd, weight, zero_centered, memory_efficient, grad_residual);
    } else {
      static const auto op =
          op_handle<Tensors3(const Tensor&, const Tensor&, c10::SymIntArrayRef, const Tensor&, const Tensor&,
                             const OptTensor&, const OptTensor&, bool, bool, const OptTensor&)>(
              "norm_ext::layer_norm_backward");
      std::tie(grad_h, grad_weight, grad_bias) = call_backward(op, grad_out, saved, shape, mean, rstd, weight, bias,
                                                               zero_centered, memory_efficient, grad_residual);
    }
    if (grad_stream.defined() && !fuse_grad_stream) grad_h = as_dtype(grad_h, grad_stream.scalar_type()) + grad_stream;
    const Tensor grad_input = as_dtype(grad_h, input_dtype);
    const Tensor grad_res = fused ? as_dtype(grad_h, ctx->saved_data["residual_dtype"].toScalarType()) : Tensor();
    return {grad_input,
            grad_res,
            Tensor(),
            weight.has_value() ? grad_weight : Tensor(),
            bias.has_value() ? grad_bias : Tensor(),
            Tensor(),
            Tensor(),
            Tensor(),
            Tensor(),
            Tensor()};
  }
};

variable_list row_norm_autograd(const Tensor& input, const OptTensor& residual, c10::SymIntArrayRef shape,
                                const OptTensor& weight, const OptTensor& bias, double eps,
                                std::optional<at::ScalarType> residual_dtype, bool zero_centered, bool memory_efficient,
                                bool rms) {
  // Nothing to differentiate (inference, no_grad): skip building the graph node.
  if (!any_requires_grad(input, residual, weight, bias)) {
    return row_norm_below_autograd(input, residual, shape, weight, bias, eps, residual_dtype, zero_centered,
                                   memory_efficient, rms);
  }
  return RowNormFunction::apply(input, residual, shape, weight, bias, eps, residual_dtype, zero_centered,
                                memory_efficient, rms);
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
