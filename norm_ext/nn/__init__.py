"""Modules. Constructors match torch.nn, and state_dicts are interchangeable with torch.nn's."""

from .group_norm import GroupNorm, InstanceNorm1d, InstanceNorm2d, InstanceNorm3d
from .normalization import LayerNorm, RMSNorm

__all__ = ["LayerNorm", "RMSNorm", "GroupNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"]
