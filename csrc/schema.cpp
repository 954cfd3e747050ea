// The one place every norm_ext op is declared. Kernels register implementations per backend at the
// end of their own files (csrc/cpu/*.cpp, csrc/cuda/*.cu), autograd in csrc/autograd/ or, for the
// ops not yet moved there, in norm_ext/ops.py; Python adds the fake kernels.
#include <torch/library.h>

TORCH_LIBRARY(norm_ext, m) {
  // Row norms (LayerNorm / RMSNorm family). Forward ops return the output and the per-row statistics
  // (float32, or float64 for float64 input) that the backward needs. zero_centered_weight applies
  // (1 + weight), Gemma-style, in float32. memory_efficient does not change the forward's result: it
  // tells the autograd formula to save the output instead of the input (the kernels ignore it).
  m.def(
      "layer_norm(Tensor input, SymInt[] normalized_shape, Tensor? weight, Tensor? bias, float eps, "
      "bool zero_centered_weight=False, bool memory_efficient=False) -> (Tensor out, Tensor mean, Tensor rstd)");
  m.def(
      "rms_norm(Tensor input, SymInt[] normalized_shape, Tensor? weight, float eps, "
      "bool zero_centered_weight=False, bool memory_efficient=False) -> (Tensor out, Tensor rstd)");
  // Fused pre-norm step: h = input + residual (stored in residual_dtype, default the residual's),
  // out = norm(h). Returns (out, h, statistics).
  m.def(
      "add_layer_norm(Tensor input, Tensor residual, SymInt[] normalized_shape, Tensor? weight, Tensor? bias, "
      "float eps, ScalarType? residual_dtype=None, bool zero_centered_weight=False, bool memory_efficient=False) "
      "-> (Tensor out, Tensor residual_out, Tensor mean, Tensor rstd)");
  m.def(
      "add_rms_norm(Tensor input, Tensor residual, SymInt[] normalized_shape, Tensor? weight, float eps, "
      "ScalarType? residual_dtype=None, bool zero_centered_weight=False, bool memory_efficient=False) "
      "-> (Tensor out, Tensor residual_out, Tensor rstd)");
  // Row-norm backward. `saved` is the forward input (h for the fused ops) or, with
  // saved_is_output=True, the forward output (memory-efficient mode: x_hat is recomputed from it).
  // grad_residual, the gradient reaching h directly, is added to grad_input. grad_weight / grad_bias
  // are empty when weight / bias are None.
  m.def(
      "layer_norm_backward(Tensor grad_out, Tensor saved, SymInt[] normalized_shape, Tensor mean, Tensor rstd, "
      "Tensor? weight, Tensor? bias, bool zero_centered_weight=False, bool saved_is_output=False, "
      "Tensor? grad_residual=None) -> (Tensor grad_input, Tensor grad_weight, Tensor grad_bias)");
  m.def(
      "rms_norm_backward(Tensor grad_out, Tensor saved, SymInt[] normalized_shape, Tensor rstd, Tensor? weight, "
      "bool zero_centered_weight=False, bool saved_is_output=False, Tensor? grad_residual=None) "
      "-> (Tensor grad_input, Tensor grad_weight)");

  // ---- Weight normalization, PowerNorm (issue 4b) ----
  // weight_norm: w = g * v / ||v||, the 2-norm taken over every dim of v except `dim` (None: over the
  // whole tensor, g then has one element). g has v's rank with size 1 except at `dim`. `norm` (float32,
  // float64 for float64 v; g's shape) is what the backward needs.
  m.def("weight_norm(Tensor v, Tensor g, int? dim) -> (Tensor w, Tensor norm)");
  m.def(
      "weight_norm_backward(Tensor grad_w, Tensor v, Tensor g, Tensor norm, int? dim) "
      "-> (Tensor grad_v, Tensor grad_g)");
  // PowerNorm over (B, T, C) input. power_norm_stats returns the per-channel sum of squares over the
  // tokens that are not padding (mask: (B, T) bool, True = pad) and the number of such tokens, both
  // float32 (float64 for float64 input), so ranks can all-reduce them before dividing.
  m.def("power_norm_stats(Tensor input, Tensor? pad_mask) -> (Tensor sum_sq, Tensor count)");
  // y = input * scale * weight + bias with a per-channel scale (1 / psi). The backward is the paper's
  // approximate one: with z = input * scale and g = grad_out * weight, grad_input = (g - (1 - alpha_bkw)
  // * ema_gz * z) * scale, and ema_gz (the running Gamma, one per channel) is advanced in place by the
  // mean of that corrected gradient times z over the non-padding tokens. The forward only carries
  // ema_gz, pad_mask and alpha_bkw for its autograd formula.
  m.def(
      "power_norm(Tensor input, Tensor scale, Tensor? weight, Tensor? bias, Tensor ema_gz, Tensor? pad_mask, "
      "float alpha_bkw) -> Tensor");
  m.def(
      "power_norm_backward(Tensor grad_out, Tensor input, Tensor scale, Tensor? weight, Tensor(a!) ema_gz, "
      "Tensor? pad_mask, float alpha_bkw, bool has_bias) -> (Tensor grad_input, Tensor grad_weight, "
      "Tensor grad_bias)");
  // GroupNorm (InstanceNorm is GroupNorm with one group per channel). Input (N, C, *), contiguous or
  // channels_last (the output keeps the layout). Returns the output and the per-(sample, group)
  // statistics (N, G) in float32 (float64 for float64 input). activation: None or "silu", applied
  // to the normalized output in the same kernel.
  m.def(
      "group_norm(Tensor input, int num_groups, Tensor? weight, Tensor? bias, float eps, str? activation=None) "
      "-> (Tensor out, Tensor mean, Tensor rstd)");
  // grad_input has the input's layout; grad_weight / grad_bias (in the parameters' dtype) are empty
  // when weight / bias are None. With activation="silu" the pre-activation is recomputed from input.
  m.def(
      "group_norm_backward(Tensor grad_out, Tensor input, int num_groups, Tensor mean, Tensor rstd, Tensor? weight, "
      "Tensor? bias, str? activation=None) -> (Tensor grad_input, Tensor grad_weight, Tensor grad_bias)");

  // Batch norm family (BatchNorm, SyncBatchNorm, MaskedBatchNorm1d). The input is (N, C, *) in any
  // layout whose channels are either outermost-but-one (NCHW) or innermost (channels_last, (N, C)).
  // pad_mask, for (N, C) input only, is an (N,) bool tensor; True rows (padding) are left out of the
  // statistics and get output 0 and gradient 0. Statistics are float32 (float64 for float64 input).
  // batch_norm_stats: per-channel Welford (count, mean, m2); count is an int64 scalar tensor, and
  // an empty input gives count 0, mean 0, m2 0 so that ranks can merge it by Chan's formula.
  m.def("batch_norm_stats(Tensor input, Tensor? pad_mask=None) -> (Tensor count, Tensor mean, Tensor m2)");
  // y = (x - mean[c]) * invstd[c] * weight[c] + bias[c]; the output keeps the input's layout.
  m.def(
      "batch_norm_elemt(Tensor input, Tensor mean, Tensor invstd, Tensor? weight, Tensor? bias, "
      "Tensor? pad_mask=None) -> Tensor");
  // batch_norm_stats and batch_norm_elemt in one op, for a training forward that merges no statistics
  // across ranks: invstd = 1 / sqrt(m2 / count + eps). On CPU a channels-first channel is then
  // normalized while it is still in cache, so x is read from memory once instead of twice. The running
  // statistics, when given, move towards the batch's by momentum (running = running + momentum *
  // (batch - running), the variance unbiased), as torch.nn.functional.batch_norm updates them; an
  // empty batch leaves them unchanged.
  m.def(
      "batch_norm_train(Tensor input, Tensor? weight, Tensor? bias, float eps, Tensor(a!)? running_mean=None, "
      "Tensor(b!)? running_var=None, float momentum=0.1) -> (Tensor out, Tensor mean, Tensor m2, Tensor invstd)");
  // The backward of batch_norm_train, batch_norm_backward_reduce and batch_norm_backward_elemt in
  // one op (the means taken over this input's count): returns dx, sum(dy) and sum(dy * x_hat).
  m.def(
      "batch_norm_train_backward(Tensor grad_out, Tensor input, Tensor mean, Tensor invstd, Tensor? weight) -> "
      "(Tensor grad_input, Tensor sum_dy, Tensor sum_dy_xhat)");
  // Per-channel sum(dy) and sum(dy * x_hat), x_hat = (x - mean) * invstd. These are also the
  // gradients of bias and weight.
  m.def(
      "batch_norm_backward_reduce(Tensor grad_out, Tensor input, Tensor mean, Tensor invstd, "
      "Tensor? pad_mask=None) -> (Tensor sum_dy, Tensor sum_dy_xhat)");
  // dx = weight * invstd * (dy - mean_dy - x_hat * mean_dy_xhat), the means taken over the (global)
  // batch. With mean_dy / mean_dy_xhat absent (statistics that do not depend on x, as in eval mode)
  // dx = weight * invstd * dy.
  m.def(
      "batch_norm_backward_elemt(Tensor grad_out, Tensor input, Tensor mean, Tensor invstd, Tensor? weight, "
      "Tensor? mean_dy, Tensor? mean_dy_xhat, Tensor? pad_mask=None) -> Tensor grad_input");
}
