"""GroupNorm and InstanceNorm modules backed by norm_ext's GroupNorm kernels.

They subclass the torch.nn classes, so parameters, buffers, state_dict keys, ``extra_repr`` and
``isinstance`` checks are torch's; only the normalization itself changes.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import functional as F


class GroupNorm(torch.nn.GroupNorm):
    """:class:`torch.nn.GroupNorm` with norm_ext's kernels.

    Extra keyword-only option: ``activation="silu"`` fuses SiLU into the normalization's output
    (the GroupNorm + SiLU pair of diffusion U-Nets).
    """

    def __init__(self, *args, activation: Optional[str] = None, **kwargs) -> None:
        if activation not in (None, "silu"):
            raise ValueError(f"GroupNorm: activation must be None or 'silu', got {activation!r}")
        super().__init__(*args, **kwargs)
        self.activation = activation

    def forward(self, input: Tensor) -> Tensor:
        return F.group_norm(input, self.num_groups, self.weight, self.bias, self.eps, activation=self.activation)

    def extra_repr(self) -> str:
        extra = super().extra_repr()
        return f"{extra}, activation={self.activation!r}" if self.activation is not None else extra


class _InstanceNormMixin:
    # torch's _InstanceNorm.forward validates the input, handles unbatched input and then calls
    # _apply_instance_norm, the one method replaced here.
    def _apply_instance_norm(self, input: Tensor) -> Tensor:
        return F.instance_norm(
            input,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training or not self.track_running_stats,
            self.momentum if self.momentum is not None else 0.0,
            self.eps,
        )


class InstanceNorm1d(_InstanceNormMixin, torch.nn.InstanceNorm1d):
    """:class:`torch.nn.InstanceNorm1d` with norm_ext's kernels."""


class InstanceNorm2d(_InstanceNormMixin, torch.nn.InstanceNorm2d):
    """:class:`torch.nn.InstanceNorm2d` with norm_ext's kernels."""


class InstanceNorm3d(_InstanceNormMixin, torch.nn.InstanceNorm3d):
    """:class:`torch.nn.InstanceNorm3d` with norm_ext's kernels."""
