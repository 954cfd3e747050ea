"""Modules. Constructors match torch.nn, and state_dicts are interchangeable with torch.nn's."""

from .normalization import LayerNorm, RMSNorm
from .power_norm import PowerNorm

__all__ = ["LayerNorm", "RMSNorm", "PowerNorm"]
