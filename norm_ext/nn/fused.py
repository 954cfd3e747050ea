"""Pre-norm residual steps as modules: ``h = input + residual``, ``out = norm(h)``, in one kernel.

In a pre-norm transformer every block ends by adding its branch output to the residual stream and
the next block starts by normalising that stream. The fused modules do both at once and return
``(out, h)``: ``out`` feeds the next branch, ``h`` is the new residual stream::

    out, h = block.norm1(embeddings)            # first block: the stream starts at the input
    out, h = block.norm2(block.attn(out), h)    # h = h + attn(out); out = norm2(h)

Parameters and state_dict keys are torch.nn.LayerNorm's / torch.nn.RMSNorm's, so checkpoints of
unfused models load unchanged.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .. import functional as F
from .normalization import LayerNorm, RMSNorm

__all__ = ["AddLayerNorm", "AddRMSNorm"]


class _AddNorm:
    """The residual step of both fused modules; each names its fused functional in ``_add_norm``."""

    def __init__(self, *args, residual_dtype: torch.dtype | None = None, **kwargs) -> None:
        self.residual_dtype = residual_dtype
        super().__init__(*args, **kwargs)

    def forward(self, input: Tensor, residual: Tensor | None = None) -> Tuple[Tensor, Tensor]:
        if residual is None:
            stream = input if self.residual_dtype is None else input.to(self.residual_dtype)
            return super().forward(input), stream
        return self._add_norm(input, residual)


class AddLayerNorm(_AddNorm, LayerNorm):
    """``forward(input, residual=None) -> (layer_norm(h), h)`` with ``h = input + residual``.

    ``residual_dtype`` (keyword-only) stores ``h`` in that dtype, e.g. float32 for a bf16 model with
    an fp32 residual stream; by default ``h`` has the residual's dtype. With ``residual=None`` the
    stream starts at ``input``. Other options as :class:`norm_ext.nn.LayerNorm`.
    """

    def _add_norm(self, input: Tensor, residual: Tensor) -> Tuple[Tensor, Tensor]:
        return F.add_layer_norm(
            input,
            residual,
            self.normalized_shape,
            self.weight,
            self.bias,
            self.eps,
            self.residual_dtype,
            zero_centered_weight=self.zero_centered_weight,
            memory_efficient=self.memory_efficient,
        )


class AddRMSNorm(_AddNorm, RMSNorm):
    """``forward(input, residual=None) -> (rms_norm(h), h)`` with ``h = input + residual``.
    Options as :class:`AddLayerNorm`."""

    def _add_norm(self, input: Tensor, residual: Tensor) -> Tuple[Tensor, Tensor]:
        return F.add_rms_norm(
            input,
            residual,
            self.normalized_shape,
            self.weight,
            self.eps,
            self.residual_dtype,
            zero_centered_weight=self.zero_centered_weight,
            memory_efficient=self.memory_efficient,
        )
