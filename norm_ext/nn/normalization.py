"""LayerNorm and RMSNorm modules backed by norm_ext's kernels.

They subclass torch.nn.LayerNorm / torch.nn.RMSNorm, so parameters, buffers, state_dict keys,
``extra_repr`` and ``isinstance`` checks are torch's; only the forward changes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import functional as F


class _RowNormOptions:
    """The keyword-only options norm_ext adds to torch's LayerNorm and RMSNorm (see :class:`LayerNorm`)."""

    def __init__(self, *args, zero_centered_weight: bool = False, memory_efficient: bool = False, **kwargs) -> None:
        self.zero_centered_weight = zero_centered_weight
        self.memory_efficient = memory_efficient
        super().__init__(*args, **kwargs)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.zero_centered_weight and self.weight is not None:
            torch.nn.init.zeros_(self.weight)


class LayerNorm(_RowNormOptions, torch.nn.LayerNorm):
    """:class:`torch.nn.LayerNorm` with norm_ext's kernels.

    Extra keyword-only options: ``zero_centered_weight`` (scale by ``1 + weight``; the weight is then
    initialised to zeros) and ``memory_efficient`` (save the output, not the input, for backward).
    """

    def forward(self, input: Tensor) -> Tensor:
        return F.layer_norm(
            input,
            self.normalized_shape,
            self.weight,
            self.bias,
            self.eps,
            zero_centered_weight=self.zero_centered_weight,
            memory_efficient=self.memory_efficient,
        )


class RMSNorm(_RowNormOptions, torch.nn.RMSNorm):
    """:class:`torch.nn.RMSNorm` with norm_ext's kernels. Extra options as :class:`LayerNorm`."""

    def forward(self, input: Tensor) -> Tensor:
        return F.rms_norm(
            input,
            self.normalized_shape,
            self.weight,
            self.eps,
            zero_centered_weight=self.zero_centered_weight,
            memory_efficient=self.memory_efficient,
        )
