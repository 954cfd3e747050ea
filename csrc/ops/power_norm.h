#pragma once
// Op glue of PowerNorm (Shen et al. 2020) over (B, T, C) input, viewed as tokens x channels, shared
// by every backend: checks, allocation, the per-channel factors and empty inputs. A backend supplies
// kDevice, Guard and
//   static void stats(const PowerNormStatsCall&);      // sum of squares and count of non-pad tokens
//   static void forward(const PowerNormFwdCall&);      // y = x * factor + shift
//   static void backward(const PowerNormBwdCall&);     // the paper's approximate backward

#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "common/reparam_checks.h"
#include "ops/common.h"

namespace norm_ext {

// Contiguous tensors; pad (bool, undefined without padding) marks padded tokens. Per-channel vectors
// and the outputs of stats and backward's parameter gradients are in the accumulation type.
struct PowerNormStatsCall {
  const at::Tensor& input;
  const at::Tensor& pad;
  const at::Tensor& sum_sq;
  const at::Tensor& count;  // 0-dim
  TokenShape shape;
};

struct PowerNormFwdCall {
  const at::Tensor& input;
  const at::Tensor& factor;  // scale * weight
  const at::Tensor& shift;   // bias
  const at::Tensor& out;
  TokenShape shape;
};

// ema_gz (the running Gamma) is advanced in place by the mean over valid tokens of the corrected
// gradient times z = input * scale.
struct PowerNormBwdCall {
  const at::Tensor& grad_out;
  const at::Tensor& input;
  const at::Tensor& pad;
  const at::Tensor& scale;
  const at::Tensor& weight;  // weight, or ones
  const at::Tensor& ema_gz;
  double alpha_bkw;
  const at::Tensor& grad_input;
  const at::Tensor& grad_weight;
  const at::Tensor& grad_bias;
  TokenShape shape;
};

// A per-channel parameter in the accumulation type, or `fill` where it is absent.
inline at::Tensor channel_param_as_acc(const std::optional<at::Tensor>& p, at::ScalarType acc, int64_t channels,
                                       double fill, const at::Tensor& like) {
  if (p.has_value() && p->defined()) return p->to(acc).contiguous();
  return at::full({channels}, fill, like.options().dtype(acc));
}

template <typename Backend>
struct PowerNormOps {
  static std::tuple<at::Tensor, at::Tensor> stats(const at::Tensor& input_, const std::optional<at::Tensor>& pad_mask) {
    constexpr const char* op = "norm_ext::power_norm_stats";
    const TokenShape shape = check_power_norm_input(op, input_, pad_mask);
    check_device_type(op, input_, Backend::kDevice);
    const typename Backend::Guard guard(input_.device());
    const at::Tensor input = input_.contiguous();
    const auto acc_opts = input.options().dtype(acc_dtype_of(input));
    at::Tensor sum_sq = at::zeros({shape.channels}, acc_opts);
    at::Tensor count = at::zeros({}, acc_opts);
    if (shape.tokens == 0 || shape.channels == 0) return {sum_sq, count};
    Backend::stats({input, contiguous_or_undefined(pad_mask), sum_sq, count, shape});
    return {sum_sq, count};
  }

  static at::Tensor forward(const at::Tensor& input_, const at::Tensor& scale, const std::optional<at::Tensor>& weight,
                            const std::optional<at::Tensor>& bias, const at::Tensor& ema_gz,
                            const std::optional<at::Tensor>& pad_mask, double) {
    constexpr const char* op = "norm_ext::power_norm";
    const TokenShape shape = check_power_norm_input(op, input_, pad_mask);
    check_power_norm_params(op, input_, scale, weight, bias, ema_gz);
    check_device_type(op, input_, Backend::kDevice);
    const typename Backend::Guard guard(input_.device());
    const at::Tensor input = input_.contiguous();
    at::Tensor out = at::empty_like(input, at::MemoryFormat::Contiguous);
    if (input.numel() == 0) return out;
    const at::ScalarType acc = acc_dtype_of(input);
    // y = x * (scale * weight) + bias: the per-channel factors folded once.
    const at::Tensor factor = (scale * channel_param_as_acc(weight, acc, shape.channels, 1.0, input)).contiguous();
    const at::Tensor shift = channel_param_as_acc(bias, acc, shape.channels, 0.0, input);
    Backend::forward({input, factor, shift, out, shape});
    return out;
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(const at::Tensor& grad_out_, const at::Tensor& input_,
                                                                 const at::Tensor& scale,
                                                                 const std::optional<at::Tensor>& weight,
                                                                 at::Tensor& ema_gz,
                                                                 const std::optional<at::Tensor>& pad_mask,
                                                                 double alpha_bkw, bool has_bias) {
    constexpr const char* op = "norm_ext::power_norm_backward";
    const TokenShape shape = check_power_norm_input(op, input_, pad_mask);
    check_same_device(op, "grad_out", grad_out_, input_);
    TORCH_CHECK_VALUE(grad_out_.sizes() == input_.sizes(), op, ": grad_out has shape ", grad_out_.sizes(),
                      " but input has shape ", input_.sizes());
    TORCH_CHECK_TYPE(grad_out_.scalar_type() == input_.scalar_type(), op, ": grad_out dtype ", grad_out_.scalar_type(),
                     " differs from input dtype ", input_.scalar_type());
    check_power_norm_params(op, input_, scale, weight, std::nullopt, ema_gz);
    check_writable(op, "ema_gz", ema_gz);
    check_device_type(op, input_, Backend::kDevice);
    const typename Backend::Guard guard(input_.device());
    const at::Tensor input = input_.contiguous();
    const at::Tensor grad_out = grad_out_.contiguous();
    const at::ScalarType acc = acc_dtype_of(input);
    const bool has_weight = weight.has_value() && weight->defined();
    at::Tensor grad_input = at::empty_like(input, at::MemoryFormat::Contiguous);
    at::Tensor grad_weight = at::zeros({shape.channels}, input.options().dtype(acc));
    at::Tensor grad_bias = at::zeros({shape.channels}, input.options().dtype(acc));
    if (input.numel() > 0) {
      const at::Tensor w = channel_param_as_acc(weight, acc, shape.channels, 1.0, input);
      // The kernels index the running Gamma densely; a strided one is advanced in a copy.
      at::Tensor ema = ema_gz.is_contiguous() ? ema_gz : ema_gz.contiguous();
      Backend::backward({grad_out, input, contiguous_or_undefined(pad_mask), scale.contiguous(), w, ema, alpha_bkw,
                         grad_input, grad_weight, grad_bias, shape});
      if (!ema.is_same(ema_gz)) ema_gz.copy_(ema);
    }
    const auto param_dtype = has_weight ? weight->scalar_type() : input.scalar_type();
    return {grad_input, has_weight ? grad_weight.to(param_dtype) : input.new_empty({0}),
            has_bias ? grad_bias.to(param_dtype) : input.new_empty({0})};
  }
};

template <typename Backend>
void register_power_norm_ops(torch::Library& m) {
  m.impl("power_norm_stats", &PowerNormOps<Backend>::stats);
  m.impl("power_norm", &PowerNormOps<Backend>::forward);
  m.impl("power_norm_backward", &PowerNormOps<Backend>::backward);
}

}  // namespace norm_ext
