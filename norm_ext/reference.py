"""Float64 reference implementations, shared by the tests and the benchmark's correctness check.

Each function upcasts its inputs to float64, computes the textbook formula with plain torch ops (so
autograd gives reference gradients), and returns float64 results. They favour clarity over speed.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor


def _f64(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.to(torch.float64)


def _reduce_dims(x: Tensor, normalized_shape: Sequence[int]) -> Tuple[int, ...]:
    return tuple(range(x.dim() - len(normalized_shape), x.dim()))


def _affine(y: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], zero_centered_weight: bool) -> Tensor:
    if weight is not None:
        y = y * ((_f64(weight) + 1.0) if zero_centered_weight else _f64(weight))
    if bias is not None:
        y = y + _f64(bias)
    return y


def layer_norm(
    x: Tensor,
    normalized_shape: Sequence[int],
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
    zero_centered_weight: bool = False,
) -> Tensor:
    x = _f64(x)
    dims = _reduce_dims(x, normalized_shape)
    mean = x.mean(dim=dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
    return _affine((x - mean) / torch.sqrt(var + eps), weight, bias, zero_centered_weight)


def rms_norm(
    x: Tensor,
    normalized_shape: Sequence[int],
    weight: Optional[Tensor] = None,
    eps: Optional[float] = None,
    zero_centered_weight: bool = False,
    eps_dtype: Optional[torch.dtype] = None,
) -> Tensor:
    """``eps=None`` means ``finfo(eps_dtype or x.dtype).eps``, torch's default."""
    if eps is None:
        eps = torch.finfo(eps_dtype or x.dtype).eps
    x = _f64(x)
    dims = _reduce_dims(x, normalized_shape)
    ms = (x * x).mean(dim=dims, keepdim=True)
    return _affine(x / torch.sqrt(ms + eps), weight, None, zero_centered_weight)


def residual_stream(x: Tensor, residual: Tensor, residual_dtype: Optional[torch.dtype] = None) -> Tensor:
    """h = x + residual, rounded to the stream's storage dtype as the fused kernels store it."""
    dtype = residual_dtype or residual.dtype
    return (_f64(x) + _f64(residual)).to(dtype)


# ---------------------------------------------------------------------------------------------------
# Weight normalization and PowerNorm.
# ---------------------------------------------------------------------------------------------------


def weight_norm(v: Tensor, g: Tensor, dim: int | None = 0) -> Tensor:
    """``g * v / ||v||`` with the norm over every dim except ``dim`` (None: the whole tensor)."""
    v, g = _f64(v), _f64(g)
    if dim is None:
        return g * v / torch.sqrt((v * v).sum())
    dims = [d for d in range(v.dim()) if d != dim % v.dim()]
    return g * v / torch.sqrt((v * v).sum(dim=dims, keepdim=True))


def group_scaling(x: Tensor, group_num: int, eps: float) -> Tensor:
    """PowerNorm's GroupScaling: each token divided by its RMS over each of ``group_num`` channel groups."""
    x = _f64(x)
    grouped = x.reshape(*x.shape[:-1], group_num, x.shape[-1] // group_num)
    rms = torch.sqrt((grouped * grouped).mean(dim=-1, keepdim=True) + eps)
    return (grouped / rms).reshape(x.shape)


class PowerNormState:
    """Float64 copy of a PowerNorm module's buffers: ``running_phi`` (psi^2), ``ema_gz`` (the running
    Gamma, nu / (1 - alpha_bkw)) and the step count."""

    def __init__(self, num_features: int) -> None:
        self.running_phi = torch.ones(num_features, dtype=torch.float64)
        self.ema_gz = torch.zeros(num_features, dtype=torch.float64)
        self.step = 0


class _PowerFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, scale, state, valid, alpha_bkw):
        z = x * scale
        ctx.save_for_backward(z, scale, weight, valid)
        ctx.state, ctx.alpha_bkw = state, alpha_bkw
        return z * weight + bias

    @staticmethod
    def backward(ctx, grad_y):
        z, scale, weight, valid = ctx.saved_tensors
        state = ctx.state
        g = grad_y * weight
        approx = g - (1.0 - ctx.alpha_bkw) * state.ema_gz * z
        valid_z = (approx * z)[valid]
        if valid_z.shape[0] > 0:
            state.ema_gz = state.ema_gz + valid_z.mean(dim=0)
        return approx * scale, (grad_y * z)[valid].sum(0), grad_y[valid].sum(0), None, None, None, None


def power_norm(
    x: Tensor,
    state: PowerNormState,
    weight: Tensor,
    bias: Tensor,
    pad_mask: Tensor | None = None,
    training: bool = True,
    alpha_fwd: float = 0.9,
    alpha_bkw: float = 0.9,
    eps: float = 1e-5,
    warmup_iters: int = 10000,
    group_num: int = 1,
) -> Tensor:
    """One PowerNorm step on (B, T, C) input, float64, following Shen et al. 2020 and the authors' code.

    Training step t (counted from 1): psi_B^2 = mean of x^2 over the non-padding tokens; the output
    uses psi_B while t <= warmup_iters and the running psi_{t-1} afterwards. The running psi^2 is a
    cumulative average while t < warmup_iters, and then (always) an EMA with alpha_fwd. The backward
    is the approximate one: grad_x = (g - (1 - alpha_bkw) * ema_gz * z) * scale, with ema_gz advanced
    by the mean over valid tokens of that corrected gradient times z. Mutates ``state``.
    """
    x = group_scaling(x, group_num, eps)
    valid = torch.ones(x.shape[:-1], dtype=torch.bool) if pad_mask is None else ~pad_mask.cpu()
    valid = valid.to(x.device)
    weight, bias = _f64(weight), _f64(bias)
    if not training:
        scale = torch.rsqrt(state.running_phi.to(x.device) + eps)
        return (x * scale) * weight + bias
    state.step += 1
    t = state.step
    tokens = x.detach()[valid]
    var = (tokens * tokens).mean(dim=0) if tokens.shape[0] > 0 else torch.zeros_like(state.running_phi)
    var = var.to(state.running_phi.device)
    scale = torch.rsqrt((var if t <= warmup_iters else state.running_phi) + eps).to(x.device)
    phi = state.running_phi
    if t < warmup_iters:
        phi = phi * (t - 1) / t + var / t
    state.running_phi = alpha_fwd * phi + (1.0 - alpha_fwd) * var
    return _PowerFunction.apply(x, weight, bias, scale, state, valid, alpha_bkw)


def group_norm(
    x: Tensor,
    num_groups: int,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
    activation: Optional[str] = None,
) -> Tensor:
    """GroupNorm over (N, C, *) in float64; ``activation="silu"`` applies SiLU to the output."""
    x = _f64(x)
    n, c = x.shape[:2]
    grouped = x.reshape(n, num_groups, math.prod(x.shape[1:]) // num_groups)
    mean = grouped.mean(dim=2, keepdim=True)
    var = ((grouped - mean) ** 2).mean(dim=2, keepdim=True)
    y = ((grouped - mean) / torch.sqrt(var + eps)).reshape(x.shape)
    param_shape = (1, c) + (1,) * (x.dim() - 2)
    if weight is not None:
        y = y * _f64(weight).reshape(param_shape)
    if bias is not None:
        y = y + _f64(bias).reshape(param_shape)
    if activation == "silu":
        y = y * torch.sigmoid(y)
    return y


def instance_norm(
    x: Tensor, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None, eps: float = 1e-5
) -> Tensor:
    """InstanceNorm with input statistics in float64: GroupNorm with one group per channel."""
    return group_norm(x, x.shape[1], weight, bias, eps)


def instance_norm_running_stats(
    x: Tensor, running_mean: Tensor, running_var: Tensor, momentum: float = 0.1
) -> Tuple[Tensor, Tensor]:
    """The running statistics after one training step, in float64: the batch average of each instance's
    mean and unbiased variance, blended with ``momentum``."""
    x = _f64(x)
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    batch_mean = flat.mean(dim=2).mean(dim=0)
    batch_var = flat.var(dim=2, unbiased=True).mean(dim=0)
    new_mean = (1 - momentum) * _f64(running_mean) + momentum * batch_mean
    new_var = (1 - momentum) * _f64(running_var) + momentum * batch_var
    return new_mean, new_var


def instance_norm_eval(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
) -> Tensor:
    """InstanceNorm normalized by running statistics (eval with track_running_stats), in float64."""
    x = _f64(x)
    shape = (1, x.shape[1]) + (1,) * (x.dim() - 2)
    y = (x - _f64(running_mean).reshape(shape)) / torch.sqrt(_f64(running_var).reshape(shape) + eps)
    if weight is not None:
        y = y * _f64(weight).reshape(shape)
    if bias is not None:
        y = y + _f64(bias).reshape(shape)
    return y


def batch_norm(
    x: Tensor,
    running_mean: Optional[Tensor] = None,
    running_var: Optional[Tensor] = None,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """BatchNorm over every dimension but dim 1. For SyncBatchNorm pass the concatenation of all
    ranks' batches (flattened to (N, C) when their spatial sizes differ).

    Returns ``(out, new_running_mean, new_running_var)`` without modifying the inputs; the running
    stats are None when not given or when the batch is empty (they stay unchanged then).
    """
    x = _f64(x)
    dims = tuple(d for d in range(x.dim()) if d != 1)
    shape = [1, -1] + [1] * (x.dim() - 2)
    count = x.numel() // max(x.shape[1], 1)
    new_mean, new_var = _f64(running_mean), _f64(running_var)
    if training:
        mean = x.mean(dim=dims)
        var = ((x - mean.view(shape)) ** 2).mean(dim=dims)
        if count > 0 and running_mean is not None:
            unbiased = var * count / max(count - 1, 1)
            new_mean = (1 - momentum) * new_mean + momentum * mean
            new_var = (1 - momentum) * new_var + momentum * unbiased
    else:
        mean, var = new_mean, new_var
    y = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + eps)
    if weight is not None:
        y = y * _f64(weight).view(shape)
    if bias is not None:
        y = y + _f64(bias).view(shape)
    return y, new_mean, new_var


def masked_batch_norm(
    x: Tensor,
    pad_mask: Tensor,
    running_mean: Optional[Tensor] = None,
    running_var: Optional[Tensor] = None,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """MaskedBatchNorm1d: x (B, T, C), pad_mask (B, T) with True = padding. BatchNorm of the packed
    valid tokens, scattered back; padded positions are 0."""
    valid = ~pad_mask
    packed, new_mean, new_var = batch_norm(x[valid], running_mean, running_var, weight, bias, training, momentum, eps)
    out = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
    out[valid] = packed
    return out, new_mean, new_var


# ---------------------------------------------------------------------------------------------------
# The backward ops, given the statistics the forward saved. The ops take mean / rstd as inputs and do
# not recompute them, so these are the closed forms in those statistics (they equal autograd's
# gradients when the statistics are the input's own).
# ---------------------------------------------------------------------------------------------------


def _row_sum_over_rows(t: Tensor, k: int) -> Tensor:
    return t.sum(dim=tuple(range(t.dim() - k)))


def row_norm_backward(
    grad_out: Tensor,
    saved: Tensor,
    normalized_shape: Sequence[int],
    mean: Optional[Tensor],
    rstd: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    zero_centered_weight: bool = False,
    saved_is_output: bool = False,
    grad_residual: Optional[Tensor] = None,
) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """(grad_input, grad_weight, grad_bias) of LayerNorm (``mean`` given) or RMSNorm (``mean`` None)
    from ``saved`` (the input, or with ``saved_is_output`` the output) and the saved statistics."""
    k = len(normalized_shape)
    dy, saved = _f64(grad_out), _f64(saved)
    stat_shape = saved.shape[: saved.dim() - k] + (1,) * k
    rstd = _f64(rstd).reshape(stat_shape)
    scale = None if weight is None else (_f64(weight) + 1.0 if zero_centered_weight else _f64(weight))
    if saved_is_output:
        shifted = saved if bias is None else saved - _f64(bias)
        x_hat = shifted if scale is None else shifted / scale
    elif mean is None:
        x_hat = saved * rstd
    else:
        x_hat = (saved - _f64(mean).reshape(stat_shape)) * rstd
    g = dy if scale is None else dy * scale
    dims = _reduce_dims(g, normalized_shape)
    centred = g - g.mean(dim=dims, keepdim=True) if mean is not None else g
    grad_input = rstd * (centred - x_hat * (g * x_hat).mean(dim=dims, keepdim=True))
    if grad_residual is not None:
        grad_input = grad_input + _f64(grad_residual)
    grad_weight = None if weight is None else _row_sum_over_rows(dy * x_hat, k)
    grad_bias = None if bias is None else _row_sum_over_rows(dy, k)
    return grad_input, grad_weight, grad_bias


def weight_norm_backward(grad_w: Tensor, v: Tensor, g: Tensor, norm: Tensor, dim: int | None) -> Tuple[Tensor, Tensor]:
    """(grad_v, grad_g) of ``w = g * v / norm`` with ``norm`` (g's shape) taken as ||v||."""
    gw, v, g, norm = _f64(grad_w), _f64(v), _f64(g), _f64(norm)
    dims = tuple(range(v.dim())) if dim is None else tuple(d for d in range(v.dim()) if d != dim % v.dim())
    norm = norm.reshape(g.shape)
    dot = (gw * v).sum(dim=dims, keepdim=True).reshape(g.shape)
    grad_g = dot / norm
    grad_v = g / norm * gw - g * dot / norm**3 * v
    return grad_v, grad_g


def power_norm_backward(
    grad_out: Tensor,
    input: Tensor,
    scale: Tensor,
    weight: Optional[Tensor],
    ema_gz: Tensor,
    pad_mask: Optional[Tensor],
    alpha_bkw: float,
    has_bias: bool,
) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor], Tensor]:
    """(grad_input, grad_weight, grad_bias, new ema_gz) of the power_norm op: the approximate backward,
    the parameter gradients and the running Gamma's step taken over the non-padding tokens."""
    dy, z = _f64(grad_out), _f64(input) * _f64(scale)
    valid = torch.ones(z.shape[:-1], dtype=torch.bool) if pad_mask is None else ~pad_mask.cpu()
    g = dy if weight is None else dy * _f64(weight)
    approx = g - (1.0 - alpha_bkw) * _f64(ema_gz) * z
    ema = _f64(ema_gz)
    if bool(valid.any()):
        ema = ema + (approx * z)[valid].mean(dim=0)
    grad_weight = None if weight is None else (dy * z)[valid].sum(dim=0)
    grad_bias = dy[valid].sum(dim=0) if has_bias else None
    return approx * _f64(scale), grad_weight, grad_bias, ema


def group_norm_backward(
    grad_out: Tensor,
    input: Tensor,
    num_groups: int,
    mean: Tensor,
    rstd: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    activation: Optional[str] = None,
) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """(grad_input, grad_weight, grad_bias) of GroupNorm (+ SiLU) from the saved (N, G) statistics."""
    x, dy = _f64(input), _f64(grad_out)
    n, c = x.shape[:2]
    param_shape = (1, c) + (1,) * (x.dim() - 2)
    group_size = math.prod(x.shape[1:]) // num_groups
    grouped = x.reshape(n, num_groups, group_size)
    stat = (n, num_groups, 1)
    x_hat = ((grouped - _f64(mean).reshape(stat)) * _f64(rstd).reshape(stat)).reshape(x.shape)
    if activation == "silu":
        pre = x_hat
        if weight is not None:
            pre = pre * _f64(weight).reshape(param_shape)
        if bias is not None:
            pre = pre + _f64(bias).reshape(param_shape)
        sig = torch.sigmoid(pre)
        dy = dy * sig * (1.0 + pre * (1.0 - sig))
    g = dy if weight is None else dy * _f64(weight).reshape(param_shape)
    g_grouped, xh_grouped = g.reshape(n, num_groups, group_size), x_hat.reshape(n, num_groups, group_size)
    grad = _f64(rstd).reshape(stat) * (
        g_grouped
        - g_grouped.mean(dim=2, keepdim=True)
        - xh_grouped * (g_grouped * xh_grouped).mean(dim=2, keepdim=True)
    )
    channel_dims = (0,) + tuple(range(2, x.dim()))
    grad_weight = None if weight is None else (dy * x_hat).sum(dim=channel_dims)
    grad_bias = None if bias is None else dy.sum(dim=channel_dims)
    return grad.reshape(x.shape), grad_weight, grad_bias


def batch_norm_backward_reduce(
    grad_out: Tensor, input: Tensor, mean: Tensor, invstd: Tensor, pad_mask: Optional[Tensor] = None
) -> Tuple[Tensor, Tensor]:
    """Per-channel sum(dy) and sum(dy * x_hat) over the non-padding rows."""
    dy, x = _channels_last_rows(grad_out, pad_mask), _channels_last_rows(input, pad_mask)
    x_hat = (x - _f64(mean)) * _f64(invstd)
    return dy.sum(dim=0), (dy * x_hat).sum(dim=0)


def batch_norm_backward_elemt(
    grad_out: Tensor,
    input: Tensor,
    mean: Tensor,
    invstd: Tensor,
    weight: Optional[Tensor],
    mean_dy: Optional[Tensor],
    mean_dy_xhat: Optional[Tensor],
    pad_mask: Optional[Tensor] = None,
) -> Tensor:
    """dx = weight * invstd * (dy - mean_dy - x_hat * mean_dy_xhat), 0 on padding rows."""
    shape = (1, -1) + (1,) * (input.dim() - 2)
    dy, x = _f64(grad_out), _f64(input)
    x_hat = (x - _f64(mean).view(shape)) * _f64(invstd).view(shape)
    if mean_dy is not None:
        dy = dy - _f64(mean_dy).view(shape) - x_hat * _f64(mean_dy_xhat).view(shape)
    scale = _f64(invstd) if weight is None else _f64(invstd) * _f64(weight)
    grad = dy * scale.view(shape)
    if pad_mask is not None:
        grad = grad.masked_fill(pad_mask.cpu().view(-1, 1), 0.0)
    return grad


def _channels_last_rows(t: Tensor, pad_mask: Optional[Tensor]) -> Tensor:
    """(N, C, *) as (rows, C) float64, without the padding rows."""
    t = _f64(t).movedim(1, -1).reshape(-1, t.shape[1])
    return t if pad_mask is None else t[~pad_mask.cpu()]


def batch_norm_stats(input: Tensor, pad_mask: Optional[Tensor] = None) -> Tuple[int, Tensor, Tensor]:
    """(count, mean, m2) per channel over the non-padding rows; an empty batch gives 0, 0, 0."""
    rows = _channels_last_rows(input, pad_mask)
    if rows.shape[0] == 0:
        zeros = torch.zeros(input.shape[1], dtype=torch.float64)
        return 0, zeros, zeros
    mean = rows.mean(dim=0)
    return rows.shape[0], mean, ((rows - mean) ** 2).sum(dim=0)
