"""Modules. Constructors match torch.nn, and state_dicts are interchangeable with torch.nn's."""

from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d, BatchNormNd, MaskedBatchNorm1d, SyncBatchNorm
from .normalization import LayerNorm, RMSNorm

__all__ = [
    "LayerNorm",
    "RMSNorm",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchNormNd",
    "SyncBatchNorm",
    "MaskedBatchNorm1d",
]
