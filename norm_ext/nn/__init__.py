"""Modules. Constructors match torch.nn, and state_dicts are interchangeable with torch.nn's."""

from .batchnorm import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    BatchNormNd,
    MaskedBatchNorm1d,
    SyncBatchNorm,
    convert_sync_batchnorm,
    revert_sync_batchnorm,
)
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
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchNormNd",
    "SyncBatchNorm",
    "MaskedBatchNorm1d",
    "convert_sync_batchnorm",
    "revert_sync_batchnorm",
]
