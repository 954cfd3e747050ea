"""Float64 reference implementations, shared by the tests and the benchmark's correctness check.

Each function upcasts its inputs to float64, computes the textbook formula with plain torch ops (so
autograd gives reference gradients), and returns float64 results. They favour clarity over speed.
"""

from __future__ import annotations

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
    grouped = x.reshape(n, num_groups, -1)
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
