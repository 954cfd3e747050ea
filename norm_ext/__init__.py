"""norm_ext: fast, exact, autograd-aware normalization layers for PyTorch.

Every norm is a custom op (``torch.ops.norm_ext.*``) with CPU and CUDA kernels, a fake kernel for
torch.compile, and an autograd formula whose backward is itself an op.
"""

import torch

# The oldest torch that CI builds and tests against (pyproject.toml). 2.4.1 failed the tests (bf16
# subnormal outputs flushed to zero on the CPU, DDP with torch.compile); 2.5 was not tried.
if torch.__version__ < "2.6":
    raise ImportError(f"norm_ext needs torch 2.6 or newer (pyproject.toml); this is torch {torch.__version__}")

from . import (
    _C,  # loads the shared library, which registers the ops; must come first
    distributed,
    functional,
    models,
    nn,
    ops,  # noqa: F401  (fake kernels and autograd formulas)
)
from .fold import FoldReport, fold_batchnorm
from .functional import (
    add_layer_norm,
    add_rms_norm,
    batch_norm,
    group_norm,
    instance_norm,
    layer_norm,
    rms_norm,
)
from .nn import convert_sync_batchnorm, revert_sync_batchnorm
from .parametrizations import remove_weight_norm, weight_norm
from .patching import ReplaceReport, replace_norms

__all__ = [
    "functional",
    "nn",
    "models",
    "layer_norm",
    "rms_norm",
    "add_layer_norm",
    "add_rms_norm",
    "weight_norm",
    "remove_weight_norm",
    "fold_batchnorm",
    "FoldReport",
    "group_norm",
    "instance_norm",
    "batch_norm",
    "distributed",
    "convert_sync_batchnorm",
    "revert_sync_batchnorm",
    "has_cuda_kernels",
    "cpu_isa",
    "replace_norms",
    "ReplaceReport",
]

__version__ = "0.1.0"


def cpu_isa() -> str:
    """The instruction set the CPU kernels run with: ``"avx512"`` (AVX-512 with BF16), ``"avx2"`` or
    ``"default"`` (baseline x86-64). Picked once per process from the CPU, and capped by
    ``NORM_EXT_CPU_ISA=avx2`` or ``=default``."""
    return _C.cpu_isa()


def has_cuda_kernels() -> bool:
    """Whether this build of norm_ext registered CUDA kernels (independent of a visible GPU)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("norm_ext::layer_norm", "CUDA")
