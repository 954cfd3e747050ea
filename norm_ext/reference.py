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
