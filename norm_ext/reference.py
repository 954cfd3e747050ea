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
