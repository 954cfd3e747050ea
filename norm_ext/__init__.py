"""norm_ext: fast, exact, autograd-aware normalization layers for PyTorch.

Every norm is a custom op (``torch.ops.norm_ext.*``) with CPU and CUDA kernels, a fake kernel for
torch.compile, and an autograd formula whose backward is itself an op.
"""

import torch

from . import _C  # noqa: F401  (loads the shared library, which registers the ops)
from . import ops  # noqa: F401  (fake kernels and autograd formulas)
from . import distributed, functional, nn
from .distributed import convert_sync_batchnorm, revert_sync_batchnorm
from .functional import add_layer_norm, add_rms_norm, batch_norm, layer_norm, rms_norm

__all__ = [
    "functional",
    "nn",
    "layer_norm",
    "rms_norm",
    "add_layer_norm",
    "add_rms_norm",
    "batch_norm",
    "distributed",
    "convert_sync_batchnorm",
    "revert_sync_batchnorm",
    "has_cuda_kernels",
]

__version__ = "0.1.0"


def has_cuda_kernels() -> bool:
    """Whether this build of norm_ext registered CUDA kernels (independent of a visible GPU)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("norm_ext::layer_norm", "CUDA")
