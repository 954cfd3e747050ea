"""``replace_norms``: swap a model's normalization modules for norm_ext's, in place.

Two kinds of module are candidates:

* torch.nn norm modules (LayerNorm, RMSNorm, BatchNorm1d/2d/3d, GroupNorm), mapped by type;
* modules that look like an RMSNorm or LayerNorm by structure, as transformer code bases define
  their own: no children, a ``weight`` parameter (and optionally ``bias``), and an ``eps`` or
  ``variance_epsilon`` attribute. Their forward is run on a probe input and compared with the
  candidate norm_ext module (plain, then Gemma-style ``1 + weight``) before anything is swapped.

Every swap is verified on a probe input, torch.nn modules included, on copies, so running statistics
are untouched. The new module takes over the old one's parameter and buffer objects, so optimizers,
tied weights and ``requires_grad`` flags carry over.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Iterable, List, Tuple

import torch
from torch import nn

from . import nn as norm_ext_nn

__all__ = ["replace_norms", "NormReplacement", "SkippedNorm", "ReplaceReport", "NORM_KINDS"]

NORM_KINDS = ("layer_norm", "rms_norm", "batch_norm", "group_norm")

# Largest probe difference accepted, relative to the reference output's magnitude.
_PROBE_RTOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}
_EPS_ATTRS = ("eps", "variance_epsilon", "epsilon")


@dataclass
class NormReplacement:
    name: str
    kind: str
    old_type: str
    new_type: str
    probe_max_diff: float


@dataclass
class SkippedNorm:
    name: str
    kind: str
    old_type: str
    reason: str


@dataclass
class ReplaceReport:
    replaced: List[NormReplacement] = field(default_factory=list)
    skipped: List[SkippedNorm] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"replaced {len(self.replaced)} module(s), skipped {len(self.skipped)}"]
        lines += [
            f"  replaced {r.name or '<root>'}: {r.old_type} -> {r.new_type} (probe max diff {r.probe_max_diff:.2e})"
            for r in self.replaced
        ]
        lines += [f"  skipped  {s.name or '<root>'}: {s.old_type} ({s.kind}): {s.reason}" for s in self.skipped]
        return "\n".join(lines)


def _type_name(module: nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def _norm_ext_module(name: str) -> type | None:
    return getattr(norm_ext_nn, name, None)


def _param_device_dtype(module: nn.Module) -> Tuple[torch.device, torch.dtype]:
    for t in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.get_default_dtype()


# --- building the replacement for each torch.nn type -------------------------------------------


def _build_layer_norm(m: nn.LayerNorm, cls: type) -> nn.Module:
    return cls(m.normalized_shape, eps=m.eps, elementwise_affine=m.elementwise_affine, bias=m.bias is not None)


def _build_rms_norm(m: nn.RMSNorm, cls: type) -> nn.Module:
    return cls(m.normalized_shape, eps=m.eps, elementwise_affine=m.elementwise_affine)


def _build_batch_norm(m: nn.modules.batchnorm._BatchNorm, cls: type) -> nn.Module:
    return cls(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)


def _build_group_norm(m: nn.GroupNorm, cls: type) -> nn.Module:
    return cls(m.num_groups, m.num_channels, m.eps, m.affine)


# torch type -> (kind, name of the norm_ext.nn class, builder, probe shape from the module)
_TORCH_TYPES: List[Tuple[type, str, str, Callable, Callable]] = [
    (nn.LayerNorm, "layer_norm", "LayerNorm", _build_layer_norm, lambda m: (2, 3, *m.normalized_shape)),
    (nn.RMSNorm, "rms_norm", "RMSNorm", _build_rms_norm, lambda m: (2, 3, *m.normalized_shape)),
    (nn.BatchNorm1d, "batch_norm", "BatchNorm1d", _build_batch_norm, lambda m: (4, m.num_features, 5)),
    (nn.BatchNorm2d, "batch_norm", "BatchNorm2d", _build_batch_norm, lambda m: (4, m.num_features, 3, 3)),
    (nn.BatchNorm3d, "batch_norm", "BatchNorm3d", _build_batch_norm, lambda m: (2, m.num_features, 2, 3, 3)),
    (nn.GroupNorm, "group_norm", "GroupNorm", _build_group_norm, lambda m: (2, m.num_channels, 3, 3)),
]


_TORCH_NORM_BASES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.RMSNorm, nn.GroupNorm, nn.LocalResponseNorm)


def _is_norm_ext(module: nn.Module) -> bool:
    return type(module).__module__.startswith("norm_ext.")


def _structural_candidate(module: nn.Module) -> Tuple[float, bool] | None:
    """(eps, has_bias) when ``module`` looks like a hand-written RMSNorm / LayerNorm."""
    if any(True for _ in module.children()):
        return None
    params = dict(module.named_parameters(recurse=False))
    weight = params.get("weight")
    if weight is None or set(params) - {"weight", "bias"} or any(True for _ in module.buffers(recurse=False)):
        return None
    for attr in _EPS_ATTRS:
        eps = getattr(module, attr, None)
        if isinstance(eps, (int, float)) and not isinstance(eps, bool):
            bias = params.get("bias")
            if bias is not None and bias.shape != weight.shape:
                return None
            return float(eps), bias is not None
    return None


def _structural_options(module: nn.Module, eps: float, has_bias: bool, kinds: Iterable[str]):
    """Candidate replacements for a structural match, most specific first: (kind, factory)."""
    shape = tuple(module.weight.shape)
    if "rms_norm" in kinds and not has_bias:
        rms = _norm_ext_module("RMSNorm")
        yield "rms_norm", lambda: rms(shape, eps=eps)
        yield "rms_norm", lambda: rms(shape, eps=eps, zero_centered_weight=True)
    if "layer_norm" in kinds:
        ln = _norm_ext_module("LayerNorm")
        yield "layer_norm", lambda: ln(shape, eps=eps, bias=has_bias)


def _adopt_state(new: nn.Module, old: nn.Module) -> None:
    """Make ``new`` use ``old``'s parameter and buffer objects (same names, shapes checked)."""
    new_params = dict(new.named_parameters(recurse=False))
    old_params = dict(old.named_parameters(recurse=False))
    if set(new_params) != set(old_params):
        raise ValueError(f"parameters differ: {sorted(old_params)} vs {sorted(new_params)}")
    for name, p in old_params.items():
        if new_params[name].shape != p.shape:
            raise ValueError(f"parameter {name} has shape {tuple(p.shape)}, expected {tuple(new_params[name].shape)}")
        new._parameters[name] = p
    for name, b in old.named_buffers(recurse=False):
        if name in new._buffers:
            new._buffers[name] = b
    new.train(old.training)


def _probe(old: nn.Module, new: nn.Module, shape: Tuple[int, ...]) -> float:
    """Max |new(x) - old(x)| / max(1, |old(x)|) on a random probe, run on copies of both modules."""
    device, dtype = _param_device_dtype(old)
    generator = torch.Generator(device="cpu").manual_seed(1234)
    x = (torch.randn(shape, generator=generator, dtype=torch.float64) * 1.7 + 0.3).to(device=device, dtype=dtype)
    old_copy, new_copy = copy.deepcopy(old), copy.deepcopy(new)
    with torch.no_grad():
        expected = old_copy(x)
        actual = new_copy(x)
    if not isinstance(expected, torch.Tensor) or not isinstance(actual, torch.Tensor):
        return float("inf")
    if expected.shape != actual.shape:
        return float("inf")
    diff = (actual.double() - expected.double()).abs().max()
    scale = max(1.0, float(expected.double().abs().max()))
    return float(diff) / scale


def _rtol(module: nn.Module) -> float:
    return _PROBE_RTOL.get(_param_device_dtype(module)[1], 1e-4)


def _swap(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for parent in model.modules():
        for child_name, child in list(parent._modules.items()):
            if child is old:
                parent._modules[child_name] = new


def replace_norms(model: nn.Module, kinds: Iterable[str] = NORM_KINDS) -> ReplaceReport:
    """Swap, in place, ``model``'s normalization modules for norm_ext's, keeping their weights.

    Args:
        model: the model to patch. A norm module passed as ``model`` itself cannot be swapped in place
            and is reported as skipped.
        kinds: which norm kinds to replace, among ``"layer_norm"``, ``"rms_norm"``, ``"batch_norm"``
            and ``"group_norm"``.

    Returns:
        A :class:`ReplaceReport`: ``replaced`` lists each swap with its probe difference, ``skipped``
        each norm-like module left alone with the reason. ``print(report)`` gives a summary.

    The new modules use the old ones' parameter and buffer objects, so an optimizer created before
    the call keeps working. Modules with hooks are skipped, since hooks are bound to the old object.
    """
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in NORM_KINDS]
    if unknown:
        raise ValueError(f"replace_norms: unknown kinds {unknown}; choose from {list(NORM_KINDS)}")
    report = ReplaceReport()
    for name, module in list(model.named_modules()):
        _consider(model, name, module, kinds, report)
    return report


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks)


def _consider(model: nn.Module, name: str, module: nn.Module, kinds: Tuple[str, ...], report: ReplaceReport) -> None:
    torch_match = next((entry for entry in _TORCH_TYPES if type(module) is entry[0]), None)
    if torch_match is not None:
        _, kind, cls_name, build, probe_shape = torch_match
        candidates = [(kind, cls_name, lambda: build(module, _norm_ext_module(cls_name)), probe_shape(module))]
    else:
        if _is_norm_ext(module):
            if isinstance(module, tuple(t for t, *_ in _TORCH_TYPES)):
                report.skipped.append(SkippedNorm(name, "-", _type_name(module), "already a norm_ext module"))
            return
        structure = _structural_candidate(module)
        if type(module).__module__.startswith("torch.nn.") and (structure or isinstance(module, _TORCH_NORM_BASES)):
            reason = "replace_norms has no norm_ext counterpart for this torch.nn type"
            report.skipped.append(SkippedNorm(name, "-", _type_name(module), reason))
            return
        if structure is None:
            return
        eps, has_bias = structure
        probe_shape = (2, 3, *module.weight.shape)
        candidates = [
            (kind, "LayerNorm" if kind == "layer_norm" else "RMSNorm", factory, probe_shape)
            for kind, factory in _structural_options(module, eps, has_bias, kinds)
        ]
        if not candidates:
            kind = "rms_norm" if not has_bias else "layer_norm"
            report.skipped.append(SkippedNorm(name, kind, _type_name(module), "kind not requested"))
            return

    kind = candidates[0][0]
    skip = None
    if torch_match is not None and kind not in kinds:
        skip = "kind not requested"
    elif torch_match is not None and _norm_ext_module(candidates[0][1]) is None:
        skip = f"not available in this build (norm_ext.nn.{candidates[0][1]} is missing)"
    elif module is model:
        skip = "the model itself is this norm; replace_norms swaps submodules in place"
    elif _has_hooks(module):
        skip = "has hooks registered on the module object"
    if skip is not None:
        report.skipped.append(SkippedNorm(name, kind, _type_name(module), skip))
        return

    failures = []
    for kind, cls_name, factory, shape in candidates:
        device, dtype = _param_device_dtype(module)
        try:
            new = factory().to(device=device, dtype=dtype)
            _adopt_state(new, module)
            diff = _probe(module, new, shape)
        except (ValueError, TypeError, RuntimeError) as e:
            failures.append(f"{cls_name}: {type(e).__name__}: {e}")
            continue
        if diff <= _rtol(module):
            _swap(model, module, new)
            report.replaced.append(NormReplacement(name, kind, _type_name(module), _type_name(new), diff))
            return
        failures.append(
            f"{_type_name(new)}{' (1 + weight)' if getattr(new, 'zero_centered_weight', False) else ''}"
            f" differs on a probe input (max rel diff {diff:.2e})"
        )
    report.skipped.append(SkippedNorm(name, kind, _type_name(module), "; ".join(failures)))
