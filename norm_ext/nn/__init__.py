"""Modules. Constructors match torch.nn, and state_dicts are interchangeable with torch.nn's."""

from .fused import AddLayerNorm, AddRMSNorm
from .group_norm import GroupNorm, InstanceNorm1d, InstanceNorm2d, InstanceNorm3d
from .normalization import LayerNorm, RMSNorm
from .power_norm import PowerNorm

__all__ = [
    "LayerNorm",
    "RMSNorm",
    "AddLayerNorm",
    "AddRMSNorm",
    "PowerNorm",
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
]
