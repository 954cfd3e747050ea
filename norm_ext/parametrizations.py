"""Weight normalization as a parametrization, interchangeable with
:func:`torch.nn.utils.parametrizations.weight_norm` (same ``parametrizations.<name>.original0/1``
state_dict keys: original0 is g, original1 is v), computed by norm_ext's fused op."""

from __future__ import annotations

import torch
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _WeightNorm

from . import functional as F

__all__ = ["weight_norm", "remove_weight_norm"]


class WeightNorm(_WeightNorm):
    """torch's weight-norm parametrization (``right_inverse`` splits a weight into g and v) whose
    forward ``g * v / ||v||`` runs in one norm_ext kernel."""

    def forward(self, weight_g: torch.Tensor, weight_v: torch.Tensor) -> torch.Tensor:
        # torch's parametrization uses dim=-1 for "norm over the whole tensor".
        dim = None if self.dim == -1 else self.dim
        return F.weight_norm(weight_v, weight_g, dim)


def weight_norm(module: torch.nn.Module, name: str = "weight", dim: int | None = 0) -> torch.nn.Module:
    """Reparametrizes ``module.<name>`` as ``g * v / ||v||``, the norm over every dim except ``dim``
    (None: the whole tensor), as :func:`torch.nn.utils.parametrizations.weight_norm`.

    Returns the module. Its state_dict loads into a module parametrized by torch's weight_norm and vice
    versa, and old-style ``<name>_g`` / ``<name>_v`` keys are accepted on load, as torch does.
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"weight_norm: module must be a torch.nn.Module, got {type(module).__name__}")
    weight = getattr(module, name, None)
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"weight_norm: module {type(module).__name__} has no tensor attribute {name!r}")
    if dim is not None and not -weight.dim() <= dim < weight.dim():
        raise ValueError(f"weight_norm: dim {dim} is out of range for {name} of shape {tuple(weight.shape)}")
    parametrize.register_parametrization(module, name, WeightNorm(dim), unsafe=True)

    def _old_keys_hook(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        g_key, v_key = f"{prefix}{name}_g", f"{prefix}{name}_v"
        if g_key in state_dict and v_key in state_dict:
            state_dict[f"{prefix}parametrizations.{name}.original0"] = state_dict.pop(g_key)
            state_dict[f"{prefix}parametrizations.{name}.original1"] = state_dict.pop(v_key)

    module._register_load_state_dict_pre_hook(_old_keys_hook)
    return module


def remove_weight_norm(module: torch.nn.Module, name: str = "weight") -> torch.nn.Module:
    """Folds the weight normalization of ``module.<name>`` back into a plain parameter holding
    ``g * v / ||v||``. Works for norm_ext's and torch's parametrization. Returns the module."""
    if not parametrize.is_parametrized(module, name):
        raise ValueError(f"remove_weight_norm: {name!r} of {type(module).__name__} is not parametrized")
    if not any(isinstance(p, _WeightNorm) for p in module.parametrizations[name]):
        raise ValueError(f"remove_weight_norm: {name!r} of {type(module).__name__} has no weight normalization")
    parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return module
