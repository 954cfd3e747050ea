"""Folding eval-mode BatchNorm into the preceding convolution or linear layer, for inference."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Dict, List, Tuple, Union

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parametrize

__all__ = ["FoldReport", "fold_batchnorm"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_TRANSPOSE = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_FOLDABLE = _CONV + _CONV_TRANSPOSE + (nn.Linear,)


@dataclass
class FoldReport:
    """``folded``: (layer, batchnorm) qualified names that were folded (the BatchNorm became
    nn.Identity). ``skipped``: (batchnorm, reason) for every BatchNorm left as it was."""

    folded: List[Tuple[str, str]] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)


def _fold_reason(layer: nn.Module, bn: _BatchNorm) -> str | None:
    """Why ``bn`` cannot be folded into ``layer``, or None when it can."""
    if bn.training:
        return "BatchNorm is in training mode"
    if bn.running_mean is None or bn.running_var is None:
        return "BatchNorm has no running statistics (track_running_stats=False)"
    out_channels = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    if bn.num_features != out_channels:
        return f"BatchNorm has {bn.num_features} features but the layer has {out_channels} outputs"
    if isinstance(layer, nn.Linear) and not isinstance(bn, nn.BatchNorm1d):
        return f"{type(bn).__name__} after Linear normalizes a different axis"
    # A Linear feeding BatchNorm1d is assumed to see 2-D (batch, features) input, where both act on dim 1.
    if parametrize.is_parametrized(layer):
        return "the layer's parameters are parametrized (e.g. weight_norm); remove that first"
    return None


@torch.no_grad()
def _fold_into(layer: nn.Module, bn: _BatchNorm) -> None:
    # y = gamma * (layer(x) - mean) / sqrt(var + eps) + beta, per output channel, computed in float64.
    weight = layer.weight
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    w = weight.double()
    if isinstance(layer, _CONV_TRANSPOSE):
        # (in, out / groups, *k): output channel o of group j is w[j * in_g:(j + 1) * in_g, o % out_g].
        groups = layer.groups
        grouped = w.reshape(groups, w.shape[0] // groups, w.shape[1], *w.shape[2:])
        folded = grouped * scale.reshape(groups, 1, w.shape[1], *([1] * (w.dim() - 2)))
        folded = folded.reshape(w.shape)
    else:
        folded = w * scale.reshape(-1, *([1] * (w.dim() - 1)))
    bias = layer.bias.double() if layer.bias is not None else torch.zeros_like(scale)
    new_bias = bias * scale + shift
    weight.copy_(folded.to(weight.dtype))
    if layer.bias is None:
        layer.bias = nn.Parameter(new_bias.to(device=weight.device, dtype=weight.dtype))
    else:
        layer.bias.copy_(new_bias.to(layer.bias.dtype))


def _fx_pairs(model: nn.Module, report: FoldReport) -> Dict[str, str] | None:
    """batchnorm name -> layer name for every BatchNorm whose only input is the output of a foldable
    layer used nowhere else, each module called once; None when the model does not trace."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001  (any tracing failure means: fall back to nn.Sequential)
        return None
    modules = dict(model.named_modules())
    calls: Dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], _BatchNorm):
            continue
        source = node.args[0] if node.args else None
        if calls[node.target] != 1:
            report.skipped.append((node.target, "BatchNorm module is called more than once"))
        elif not (
            isinstance(source, torch.fx.Node)
            and source.op == "call_module"
            and isinstance(modules[source.target], _FOLDABLE)
        ):
            report.skipped.append((node.target, "input is not the output of a Conv, ConvTranspose or Linear"))
        elif len(source.users) != 1 or calls[source.target] != 1:
            report.skipped.append((node.target, f"output of {source.target} is also used elsewhere"))
        else:
            pairs[node.target] = source.target
    return pairs


def _sequential_pairs(model: nn.Module, report: FoldReport) -> Dict[str, str]:
    pairs = {}
    for prefix, container in model.named_modules():
        if not isinstance(container, nn.Sequential):
            continue
        children = list(container.named_children())
        for (layer_name, layer), (bn_name, bn) in zip(children, children[1:]):
            if isinstance(bn, _BatchNorm) and isinstance(layer, _FOLDABLE):
                join = f"{prefix}." if prefix else ""
                pairs[join + bn_name] = join + layer_name
    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm) and name not in pairs:
            report.skipped.append(
                (
                    name,
                    "model does not trace with torch.fx and the BatchNorm does not follow a "
                    "foldable layer inside an nn.Sequential",
                )
            )
    return pairs


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def fold_batchnorm(
    model: nn.Module, *, inplace: bool = False, return_report: bool = False
) -> Union[nn.Module, Tuple[nn.Module, FoldReport]]:
    """Folds every eval-mode BatchNorm into the Conv1d/2d/3d, ConvTranspose1d/2d/3d or Linear that
    feeds it, replacing the BatchNorm with nn.Identity, and returns the model (a copy unless
    ``inplace``), plus a :class:`FoldReport` when ``return_report``.

    The data flow comes from torch.fx (any model structure it traces); a model that does not trace
    is handled by pairing adjacent children of its nn.Sequential containers. A BatchNorm that cannot
    be folded (training mode, no running stats, not fed by a foldable layer alone, shared modules,
    mismatched features, parametrized weights) is left as it is and listed in ``report.skipped``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fold_batchnorm: model must be a torch.nn.Module, got {type(model).__name__}")
    report = FoldReport()
    if not inplace:
        model = copy.deepcopy(model)
    pairs = _fx_pairs(model, report)
    if pairs is None:
        pairs = _sequential_pairs(model, report)
    for bn_name, layer_name in pairs.items():
        bn = model.get_submodule(bn_name)
        layer = model.get_submodule(layer_name)
        reason = _fold_reason(layer, bn)
        if reason is not None:
            report.skipped.append((bn_name, reason))
            continue
        _fold_into(layer, bn)
        _set_submodule(model, bn_name, nn.Identity())
        report.folded.append((layer_name, bn_name))
    return (model, report) if return_report else model
