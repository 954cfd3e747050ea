"""Functional API. Signatures and semantics follow ``torch.nn.functional``; norm_ext's extras are
keyword-only and default to torch's behaviour."""

from __future__ import annotations

import numbers
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from . import _C, distributed, ops  # importing ops registers the fake kernels

_compiling = torch.compiler.is_compiling

_ops = torch.ops.norm_ext

ShapeLike = Union[int, Sequence[int], torch.Size]

__all__ = [
    "layer_norm",
    "rms_norm",
    "add_layer_norm",
    "add_rms_norm",
    "weight_norm",
    "group_norm",
    "instance_norm",
    "batch_norm",
]


def _as_shape(normalized_shape: ShapeLike) -> list:
    if isinstance(normalized_shape, numbers.Integral):
        return [int(normalized_shape)]
    return [int(s) for s in normalized_shape]


def _check_momentum(op: str, momentum) -> None:
    # A tensor momentum is the modules' cumulative average (1 / step), in range by construction.
    if not isinstance(momentum, Tensor) and not 0.0 <= momentum <= 1.0:
        raise ValueError(f"{op}: momentum must be in [0, 1], got {momentum}")


def _check_tensor(name: str, t) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def _rms_eps(input: Tensor, eps: Optional[float]) -> float:
    # torch.nn.functional.rms_norm's default: the machine epsilon of the input's dtype.
    if eps is None:
        return torch.finfo(input.dtype).eps if input.is_floating_point() else 0.0
    return float(eps)


def layer_norm(
    input: Tensor,
    normalized_shape: ShapeLike,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
    *,
    zero_centered_weight: bool = False,
    memory_efficient: bool = False,
) -> Tensor:
    """Layer normalization over the trailing ``normalized_shape`` dimensions, as
    :func:`torch.nn.functional.layer_norm`.

    Statistics are accumulated in float32 (float64 for float64 input); ``weight``/``bias`` may be
    float32 while ``input`` is bf16/fp16, and the output has the input's dtype.

    Args:
        zero_centered_weight: scale by ``1 + weight`` (Gemma-style), the 1 added in float32.
        memory_efficient: save the output instead of the input for the backward and recompute the
            normalized input from it (saves one activation; a weight element of exactly 0 then gives
            a non-finite gradient, as in Apex).
    """
    # The eager call (csrc/python_module.cpp); NotImplemented sends an unusual call down the general
    # path, which Dynamo also traces.
    if not _compiling():
        out = _C.layer_norm(input, normalized_shape, weight, bias, eps, zero_centered_weight, memory_efficient)
        if out is not NotImplemented:
            return out
    _check_tensor("input", input)
    out, _, _ = _ops.layer_norm(
        input, _as_shape(normalized_shape), weight, bias, float(eps), zero_centered_weight, memory_efficient
    )
    return out


def rms_norm(
    input: Tensor,
    normalized_shape: ShapeLike,
    weight: Optional[Tensor] = None,
    eps: Optional[float] = None,
    *,
    zero_centered_weight: bool = False,
    memory_efficient: bool = False,
) -> Tensor:
    """Root-mean-square normalization, as :func:`torch.nn.functional.rms_norm`:
    ``input / sqrt(mean(input**2) + eps) * weight`` over the trailing ``normalized_shape`` dims.

    ``eps=None`` uses ``torch.finfo(input.dtype).eps``, as torch does. Extras as in :func:`layer_norm`.
    """
    if not _compiling():
        out = _C.rms_norm(input, normalized_shape, weight, eps, zero_centered_weight, memory_efficient)
        if out is not NotImplemented:
            return out
    _check_tensor("input", input)
    out, _ = _ops.rms_norm(
        input, _as_shape(normalized_shape), weight, _rms_eps(input, eps), zero_centered_weight, memory_efficient
    )
    return out


def add_layer_norm(
    input: Tensor,
    residual: Tensor,
    normalized_shape: ShapeLike,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
    residual_dtype: Optional[torch.dtype] = None,
    *,
    zero_centered_weight: bool = False,
    memory_efficient: bool = False,
) -> Tuple[Tensor, Tensor]:
    """The pre-norm transformer step in one kernel: ``h = input + residual``, returns
    ``(layer_norm(h), h)``.

    ``h`` is stored in ``residual_dtype`` (default: the residual's dtype), so
    ``residual_dtype=torch.float32`` keeps the residual stream in fp32 while ``input`` is bf16. The
    norm is computed from ``h`` as stored.
    """
    if not _compiling():
        pair = _C.add_layer_norm(
            input,
            residual,
            normalized_shape,
            weight,
            bias,
            eps,
            residual_dtype,
            zero_centered_weight,
            memory_efficient,
        )
        if pair is not NotImplemented:
            return pair
    _check_tensor("input", input)
    _check_tensor("residual", residual)
    out, h, _, _ = _ops.add_layer_norm(
        input,
        residual,
        _as_shape(normalized_shape),
        weight,
        bias,
        float(eps),
        residual_dtype,
        zero_centered_weight,
        memory_efficient,
    )
    return out, h


def add_rms_norm(
    input: Tensor,
    residual: Tensor,
    normalized_shape: ShapeLike,
    weight: Optional[Tensor] = None,
    eps: Optional[float] = None,
    residual_dtype: Optional[torch.dtype] = None,
    *,
    zero_centered_weight: bool = False,
    memory_efficient: bool = False,
) -> Tuple[Tensor, Tensor]:
    """``h = input + residual``; returns ``(rms_norm(h), h)`` from one kernel. See :func:`add_layer_norm`."""
    if not _compiling():
        pair = _C.add_rms_norm(
            input, residual, normalized_shape, weight, eps, residual_dtype, zero_centered_weight, memory_efficient
        )
        if pair is not NotImplemented:
            return pair
    _check_tensor("input", input)
    _check_tensor("residual", residual)
    out, h, _ = _ops.add_rms_norm(
        input,
        residual,
        _as_shape(normalized_shape),
        weight,
        # The normalised tensor is h, so torch's default eps follows h's dtype, not the input's.
        torch.finfo(residual_dtype or residual.dtype).eps if eps is None else float(eps),
        residual_dtype,
        zero_centered_weight,
        memory_efficient,
    )
    return out, h


def weight_norm(v: Tensor, g: Tensor, dim: int | None = 0) -> Tensor:
    """``g * v / ||v||`` in one kernel, the 2-norm over every dim of ``v`` except ``dim`` (None: the
    whole tensor), as ``torch._weight_norm(v, g, dim)``. ``g`` has one element per slice along ``dim``
    (torch's shape: ``v``'s rank with size 1 elsewhere). Negative ``dim`` counts from the end.

    This is the tensor function; :func:`norm_ext.weight_norm` applies it to a module's parameter.
    """
    if not _compiling():
        w = _C.weight_norm(v, g, dim)
        if w is not NotImplemented:
            return w
    _check_tensor("v", v)
    _check_tensor("g", g)
    if dim is not None:
        if not -v.dim() <= dim < v.dim():
            raise ValueError(f"weight_norm: dim {dim} is out of range for v of shape {tuple(v.shape)}")
        dim = dim % v.dim()
    w, _ = _ops.weight_norm(v, g, dim)
    return w


_GROUP_NORM_ACTIVATIONS = (None, "silu")


def group_norm(
    input: Tensor,
    num_groups: int,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
    *,
    activation: Optional[str] = None,
) -> Tensor:
    """Group normalization over ``(N, C, *)`` input, as :func:`torch.nn.functional.group_norm`.

    The C channels are split into ``num_groups`` groups (which must divide C); each (sample, group)
    is normalized by its own mean and biased variance, then scaled per channel by ``weight`` and
    shifted by ``bias``. Contiguous and channels_last input are read in place and the output keeps
    the input's memory format. Statistics are accumulated in float32 (float64 for float64 input);
    ``weight``/``bias`` may be float32 while ``input`` is bf16/fp16.

    Args:
        activation: ``"silu"`` applies ``y * sigmoid(y)`` to the normalized output in the same
            kernel (the GroupNorm + SiLU pair of diffusion U-Nets); ``None`` (default) applies none.
    """
    if activation is None and not _compiling():
        out = _C.group_norm(input, num_groups, weight, bias, eps)
        if out is not NotImplemented:
            return out
    _check_tensor("input", input)
    if activation not in _GROUP_NORM_ACTIVATIONS:
        raise ValueError(f"group_norm: activation must be None or 'silu', got {activation!r}")
    if isinstance(num_groups, bool) or not isinstance(num_groups, numbers.Integral):
        raise TypeError(f"group_norm: num_groups must be an int, got {type(num_groups).__name__}")
    out, _, _ = _ops.group_norm(input, int(num_groups), weight, bias, float(eps), activation)
    return out


def _batch_averaged_instance_stats(input: Tensor, mean: Tensor, rstd: Tensor, eps: float) -> Tuple[Tensor, Tensor]:
    # The instance statistics averaged over the batch, as torch.instance_norm feeds its running
    # averages: the mean, and the unbiased variance (recovered from rstd = 1 / sqrt(var + eps)).
    spatial = input.numel() // (input.shape[0] * input.shape[1])
    var = (rstd.double().reciprocal().square() - eps).clamp_min(0.0)
    unbiased = var * (spatial / (spatial - 1))
    return mean.double().mean(0), unbiased.mean(0)


def instance_norm(
    input: Tensor,
    running_mean: Optional[Tensor] = None,
    running_var: Optional[Tensor] = None,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Instance normalization over ``(N, C, *)`` input, as :func:`torch.nn.functional.instance_norm`.

    With ``use_input_stats`` every (sample, channel) is normalized by its own statistics (GroupNorm
    with one group per channel, same kernels) and, when given, ``running_mean``/``running_var`` are
    updated in place with the batch-averaged instance mean and unbiased variance. Otherwise the
    running statistics normalize the input.
    """
    if use_input_stats and running_mean is None and running_var is None and not _compiling():
        out = _C.instance_norm(input, weight, bias, momentum, eps)
        if out is not NotImplemented:
            return out
    _check_tensor("input", input)
    if input.dim() < 3:
        raise ValueError(f"instance_norm: input must have shape (N, C, *spatial), got {tuple(input.shape)}")
    if (running_mean is None) != (running_var is None):
        raise ValueError("instance_norm: running_mean and running_var must be given together")
    _check_momentum("instance_norm", momentum)
    channels = input.shape[1]
    if not use_input_stats:
        if running_mean is None or running_var is None:
            raise ValueError("instance_norm: use_input_stats=False needs running_mean and running_var")
        if eps < 0:
            raise ValueError(f"instance_norm: eps must be a finite non-negative number, got {eps}")
        shape = (1, channels) + (1,) * (input.dim() - 2)
        compute_dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
        scale = torch.rsqrt(running_var.to(compute_dtype) + eps)
        if weight is not None:
            scale = scale * weight.to(compute_dtype)
        # (x - mean) * scale, not x * scale - mean * scale, which cancels when |mean| >> std.
        out = (input.to(compute_dtype) - running_mean.to(compute_dtype).view(shape)) * scale.view(shape)
        if bias is not None:
            out = out + bias.to(compute_dtype).view(shape)
        return out.to(input.dtype)
    if input.numel() // max(input.shape[0] * channels, 1) <= 1:
        raise ValueError(
            "instance_norm: expected more than 1 spatial element when training, got input of shape "
            f"{tuple(input.shape)}"
        )
    out, mean, rstd = _ops.group_norm(input, channels, weight, bias, float(eps), None)
    if running_mean is not None and running_var is not None:
        with torch.no_grad():
            batch_mean, batch_var = _batch_averaged_instance_stats(input, mean, rstd, float(eps))
            running_mean.mul_(1.0 - momentum).add_(batch_mean.to(running_mean.dtype), alpha=momentum)
            running_var.mul_(1.0 - momentum).add_(batch_var.to(running_var.dtype), alpha=momentum)
    return out


# ---------------------------------------------------------------------------------------------------
# Batch norm
# ---------------------------------------------------------------------------------------------------


def _check_batch_norm_args(
    input: Tensor,
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    weight: Optional[Tensor],
    bias: Optional[Tensor],
) -> None:
    _check_tensor("input", input)
    if input.dim() < 2:
        raise ValueError(f"batch_norm: expected input of shape (N, C, *), got shape {tuple(input.shape)}")
    channels = input.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (channels,):
            raise ValueError(
                f"batch_norm: {name} must have shape [{channels}] (one value per channel of the input), "
                f"got {list(t.shape)}"
            )


def _verify_batch_size(input: Tensor) -> None:
    values = input.numel() // max(input.shape[1], 1)
    if values == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(input.shape)}")


def _param_grad(sum_: Tensor, param: Optional[Tensor], needed: bool) -> Optional[Tensor]:
    return sum_.to(param.dtype) if needed and param is not None else None


class _BatchNormTrain(torch.autograd.Function):
    """Batch-statistics normalization with padding or across ranks (the plain case is the op
    batch_norm_train). With ``group_name`` the per-rank (count, mean, m2) are merged across that
    process group in the forward, and the backward's per-channel sums are all-reduced.

    Returns ``(out, mean, m2, count)``: the statistics (non-differentiable) feed the running-stat
    update. ``count`` is a float64 scalar tensor, so nothing here reads a value on the host.
    Weight/bias gradients are this rank's own sums, as in torch.nn.SyncBatchNorm (DDP averages them).
    """

    @staticmethod
    def forward(ctx, input, weight, bias, pad_mask, eps: float, group_name: Optional[str]):
        per_channel = input.numel() // max(input.shape[1], 1)
        count, mean, m2 = _ops.batch_norm_stats(input, pad_mask)
        count = count.to(torch.float64)
        if group_name is not None:
            count, mean, m2 = distributed.all_gather_stats(count, mean, m2, group_name, per_channel)
        invstd = torch.rsqrt(m2 / count.clamp(min=1) + eps)
        out = _ops.batch_norm_elemt(input, mean, invstd, weight, bias, pad_mask)
        ctx.save_for_backward(input, weight, bias, pad_mask, mean, invstd, count)
        ctx.group_name = group_name
        ctx.mark_non_differentiable(mean, m2, count)
        return out, mean, m2, count

    @staticmethod
    def backward(ctx, grad_out, *unused_stat_grads):
        input, weight, bias, pad_mask, mean, invstd, count = ctx.saved_tensors
        needs_input, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        grad_input = None
        sum_dy, sum_dy_xhat = _ops.batch_norm_backward_reduce(grad_out, input, mean, invstd, pad_mask)
        if needs_input:
            total_dy, total_dy_xhat = sum_dy, sum_dy_xhat
            if ctx.group_name is not None:
                total_dy, total_dy_xhat = distributed.all_reduce_sums(sum_dy, sum_dy_xhat, ctx.group_name)
            n = count.clamp(min=1)
            grad_input = _ops.batch_norm_backward_elemt(
                grad_out, input, mean, invstd, weight, total_dy / n, total_dy_xhat / n, pad_mask
            )
        grad_weight = _param_grad(sum_dy_xhat, weight, needs_weight)
        grad_bias = _param_grad(sum_dy, bias, needs_bias)
        return grad_input, grad_weight, grad_bias, None, None, None


def _update_running_stats(
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    mean: Tensor,
    m2: Tensor,
    count: Tensor,
    momentum: Union[float, Tensor],
) -> None:
    # Tensor arithmetic throughout (count and a cumulative-average momentum are tensors), so the
    # update never reads a value on the host; an empty global batch leaves the buffers unchanged.
    with torch.no_grad():
        has_data = count > 0
        unbiased_var = m2 / (count - 1).clamp(min=1)
        for buffer, value in ((running_mean, mean), (running_var, unbiased_var)):
            if buffer is not None:
                updated = buffer + (value.to(buffer.dtype) - buffer) * momentum
                buffer.copy_(torch.where(has_data, updated, buffer))


def _batch_norm(
    input: Tensor,
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    training: bool,
    momentum: Union[float, Tensor],
    eps: float,
    *,
    group_name: Optional[str] = None,
    pad_mask: Optional[Tensor] = None,
) -> Tensor:
    """The batch norm behind the public function and every module. ``group_name`` merges the batch
    statistics across that process group (see norm_ext.distributed); ``pad_mask`` ((N,) bool for
    (N, C) input, True = padding) leaves rows out of the statistics and zeroes their output."""
    if group_name is None and pad_mask is None and not _compiling():
        out = _C.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
        if out is not NotImplemented:
            return out
    _check_batch_norm_args(input, running_mean, running_var, weight, bias)
    if eps < 0:
        raise ValueError(f"batch_norm: eps must be a finite non-negative number, got {eps}")
    _check_momentum("batch_norm", momentum)
    if not training:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm: running_mean and running_var are required when training=False")
        acc = ops._acc_dtype(input.dtype)
        invstd = torch.rsqrt(running_var.to(acc) + eps)
        return _ops.batch_norm_elemt(input, running_mean.to(acc), invstd, weight, bias, pad_mask)
    if group_name is None and pad_mask is None:
        # Nothing to merge between the statistics and the normalization: one op (autograd in C++),
        # which on CPU reads a channels-first x once instead of twice (and likewise dy and x in the
        # backward), and updates the running statistics.
        _verify_batch_size(input)
        if not isinstance(momentum, Tensor):
            out, _, _, _ = _ops.batch_norm_train.default(
                input, weight, bias, float(eps), running_mean, running_var, float(momentum)
            )
            return out
        out, mean, m2, _ = _ops.batch_norm_train.default(input, weight, bias, float(eps))
        count = input.new_full((), input.numel() // max(input.shape[1], 1), dtype=torch.float64)
    else:
        out, mean, m2, count = _BatchNormTrain.apply(input, weight, bias, pad_mask, float(eps), group_name)
    _update_running_stats(running_mean, running_var, mean, m2, count, momentum)
    return out


def batch_norm(
    input: Tensor,
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Batch normalization over every dimension but the channel dimension 1, as
    :func:`torch.nn.functional.batch_norm`.

    ``input`` is (N, C), (N, C, L), (N, C, H, W) or (N, C, D, H, W), contiguous or channels_last /
    channels_last_3d (the output keeps that layout); fp32/fp64/fp16/bf16 with float32 (or the
    input's dtype) parameters and running stats. Statistics are Welford / Chan in float32 (float64
    for float64 input). With ``training=True`` the running stats, when given, are updated in place
    with the unbiased batch variance, without any host synchronisation.
    """
    return _batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
