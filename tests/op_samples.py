"""Sample inputs for every op in norm_ext's schema, in the manner of torch's OpInfo.

Each op has a spec: a builder that makes the op's arguments for a dtype, a parameter dtype and a shape
case, and a float64 reference of its outputs (norm_ext.reference). From those, and from the op's
schema, :func:`samples` generates the variants: for every tensor argument the op is given (parameters
and saved statistics included) a non-contiguous, a storage-offset (misaligned for 16-byte vectors) and
an expanded (stride-0) copy; channels-last where the op has a channel dim; empty and size-1 dims; every
supported dtype with parameters in float32 and in the activation dtype; for the ops with a padding mask,
padding that holds zeros, large values, NaN and inf. tests/test_op_samples.py runs the generic checks
over them.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

import norm_ext  # noqa: F401  (loads the ops)
from norm_ext import reference as ref

F32, F64, F16, BF16 = torch.float32, torch.float64, torch.float16, torch.bfloat16
DTYPES = (F32, F64, F16, BF16)
PAD_FILLS = {"zeros": 0.0, "large": 1e30, "nan": float("nan"), "inf": float("inf")}


def acc(dtype: torch.dtype) -> torch.dtype:
    return F64 if dtype == F64 else F32


@dataclass
class Sample:
    op: str
    # the op's arguments by schema name, in schema order, contiguous and on the CPU
    base: Dict[str, object]
    desc: str
    # (argument, layout) pairs applied to the base arguments on the target device
    layouts: Tuple[Tuple[str, str], ...] = ()

    @property
    def id(self) -> str:
        return f"{self.op}-{self.desc}"

    @property
    def spec(self) -> OpSpec:
        return SPECS[self.op]

    def args(self, device: str = "cpu") -> Dict[str, object]:
        # A copy each time: an op may write to an argument (power_norm_backward's ema_gz).
        args = {n: v.to(device, copy=True) if isinstance(v, Tensor) else v for n, v in self.base.items()}
        for name, layout in self.layouts:
            args[name] = LAYOUTS[layout](args[name])
        return args

    def padding(self) -> Optional[Tensor]:
        """The padding mask the op sees (after its layout variant), when it has padding in it."""
        mask = self.args()[self.spec.pad] if self.spec.pad else None
        return mask.contiguous() if isinstance(mask, Tensor) and bool(mask.any()) else None

    def with_padding(self, fill: float) -> Sample:
        """The sample with the padding rows of its padded tensors set to ``fill``."""
        mask, base = self.padding(), dict(self.base)
        for name in self.spec.padded:
            if isinstance(base.get(name), Tensor):
                base[name] = base[name].clone()
                # "large" is the dtype's largest finite value where 1e30 does not fit (fp16)
                base[name][mask] = min(fill, torch.finfo(base[name].dtype).max) if math.isfinite(fill) else fill
        return Sample(self.op, base, self.desc, self.layouts)


def call(op: str, args: Dict[str, object]):
    out = getattr(torch.ops.norm_ext, op).default(*args.values())
    return out if isinstance(out, tuple) else (out,)


@dataclass
class OpSpec:
    # (dtype, param_dtype, case) -> the op's arguments by schema name, in schema order
    build: Callable[[torch.dtype, torch.dtype, str], Dict[str, object]]
    # the op's arguments -> one float64 expected value (or None: not compared) per output
    reference: Callable[[Dict[str, object]], Sequence[Optional[Tensor]]]
    cases: Tuple[str, ...] = ("base",)
    dtypes: Tuple[torch.dtype, ...] = DTYPES
    has_params: bool = True
    # arguments whose dim 1 is a channel dim (channels-last variants of their 4-d form)
    channel_args: Tuple[str, ...] = ()
    pad: Optional[str] = None
    # arguments whose padding rows (per the mask) hold values that must not reach a result
    padded: Tuple[str, ...] = ()
    # the cases whose arguments get the layout variants (default: the first case)
    layout_cases: Tuple[str, ...] = ()
    # outputs compared only over the non-padding rows (their padding rows are unspecified)
    real_rows_only: Tuple[int, ...] = ()


def randn(*shape, dtype=F32) -> Tensor:
    return torch.randn(*shape, dtype=F64).to(dtype)


def positive(*shape, dtype=F32) -> Tensor:
    return (torch.rand(*shape, dtype=F64) + 0.5).to(dtype)


# ---------------------------------------------------------------------------------------------------
# Row norms. Shapes: base (3, 5, 24) over the last dim; 2d over the last two dims; an odd row of 37;
# size-1 rows and an empty batch.
# ---------------------------------------------------------------------------------------------------

ROW_SHAPES = {
    "base": ((3, 5, 24), 1),
    "2d": ((3, 4, 6), 2),
    "odd": ((4, 37), 1),
    "size1": ((5, 1), 1),
    "empty": ((0, 16), 1),
}
ROW_CASES = tuple(ROW_SHAPES)


def _row_shape(case):
    shape, k = ROW_SHAPES[case]
    return shape, list(shape[len(shape) - k :])


def _row_stats(x, ns, rms, eps=1e-5):
    """(mean or None, rstd) of each row, float64."""
    x64 = x.double()
    dims = tuple(range(x.dim() - len(ns), x.dim()))
    if rms:
        return None, torch.rsqrt((x64 * x64).mean(dims) + eps)
    mean = x64.mean(dims)
    return mean, torch.rsqrt(((x64 - mean.view(mean.shape + (1,) * len(ns))) ** 2).mean(dims) + eps)


def _build_row_forward(rms, fused):
    def build(dtype, pdtype, case):
        shape, ns = _row_shape(case)
        args = {"input": randn(*shape, dtype=dtype)}
        if fused:
            args["residual"] = randn(*shape, dtype=dtype)
        args["normalized_shape"] = ns
        args["weight"] = randn(*ns, dtype=pdtype)
        if not rms:
            args["bias"] = randn(*ns, dtype=pdtype)
        args["eps"] = 1e-5
        if fused:
            # a float32 residual stream under low-precision activations, as in mixed-precision training
            args["residual_dtype"] = F32 if case == "2d" and dtype in (F16, BF16) else None
        args["zero_centered_weight"] = case == "odd"
        args["memory_efficient"] = case == "odd"
        return args

    return build


def _row_forward_reference(rms, fused):
    def reference(a):
        x = a["input"]
        if fused:
            x = ref.residual_stream(x, a["residual"], a["residual_dtype"])
        ns, w, eps, zc = a["normalized_shape"], a["weight"], a["eps"], a["zero_centered_weight"]
        mean, rstd = _row_stats(x, ns, rms, eps)
        if rms:
            out, stats = ref.rms_norm(x, ns, w, eps, zc), (rstd,)
        else:
            out, stats = ref.layer_norm(x, ns, w, a["bias"], eps, zc), (mean, rstd)
        return (out, x.double(), *stats) if fused else (out, *stats)

    return reference


def _build_row_backward(rms):
    def build(dtype, pdtype, case):
        shape, ns = _row_shape(case)
        x = randn(*shape, dtype=dtype)
        mean, rstd = _row_stats(x, ns, rms)
        stat = acc(dtype)
        args = {"grad_out": randn(*shape, dtype=dtype), "saved": x, "normalized_shape": ns}
        if not rms:
            args["mean"] = mean.to(stat)
        args["rstd"] = rstd.to(stat)
        args["weight"] = randn(*ns, dtype=pdtype)
        if not rms:
            args["bias"] = randn(*ns, dtype=pdtype)
        args["zero_centered_weight"] = case == "odd"
        args["saved_is_output"] = case == "2d"
        if case == "2d":
            w = args["weight"].double()
            b = 0.0 if rms else args["bias"].double()
            x_hat = (x.double() - (0.0 if rms else mean.view(mean.shape + (1, 1)))) * rstd.view(rstd.shape + (1, 1))
            args["saved"] = (x_hat * w + b).to(dtype)
        args["grad_residual"] = randn(*shape, dtype=dtype) if case in ("base", "odd") else None
        return args

    return build


def _row_backward_reference(rms):
    def reference(a):
        out = ref.row_norm_backward(
            a["grad_out"],
            a["saved"],
            a["normalized_shape"],
            None if rms else a["mean"],
            a["rstd"],
            a["weight"],
            None if rms else a["bias"],
            a["zero_centered_weight"],
            a["saved_is_output"],
            a["grad_residual"],
        )
        return out[:2] if rms else out

    return reference


# ---------------------------------------------------------------------------------------------------
# Weight norm: v (6, 5, 3) normalized over every dim but `dim`.
# ---------------------------------------------------------------------------------------------------

WN_DIMS = {"base": 0, "last": 2, "whole": None, "odd": 1}


def _wn_shapes(case):
    dim = WN_DIMS[case]
    v_shape = (6, 5, 3) if case != "odd" else (7, 37, 1)
    g_shape = (1,) * 3 if dim is None else tuple(s if d == dim else 1 for d, s in enumerate(v_shape))
    return dim, v_shape, g_shape


def _wn_norm(v, dim):
    dims = tuple(range(v.dim())) if dim is None else tuple(d for d in range(v.dim()) if d != dim)
    return v.double().pow(2).sum(dims, keepdim=True).sqrt()


def _build_weight_norm(dtype, pdtype, case):
    dim, v_shape, g_shape = _wn_shapes(case)
    return {"v": randn(*v_shape, dtype=dtype), "g": randn(*g_shape, dtype=dtype), "dim": dim}


def _build_weight_norm_backward(dtype, pdtype, case):
    dim, v_shape, g_shape = _wn_shapes(case)
    v = randn(*v_shape, dtype=dtype)
    return {
        "grad_w": randn(*v_shape, dtype=dtype),
        "v": v,
        "g": randn(*g_shape, dtype=dtype),
        "norm": _wn_norm(v, dim).to(acc(dtype)),
        "dim": dim,
    }


# ---------------------------------------------------------------------------------------------------
# PowerNorm: (B, T, C) tokens with a (B, T) padding mask.
# ---------------------------------------------------------------------------------------------------

PN_SHAPES = {"base": (2, 5, 8), "odd": (3, 7, 37), "empty": (0, 4, 8), "size1": (1, 1, 3)}


def _pad_mask(b, t, case):
    mask = torch.zeros(b, t, dtype=torch.bool)
    if case == "base" and t > 1:
        mask[0, -2:] = True
        mask[-1, 1] = True
    if case == "allpad":
        mask[:] = True
    return mask


def _build_power_norm_stats(dtype, pdtype, case):
    b, t, c = PN_SHAPES.get(case, PN_SHAPES["base"])
    return {"input": randn(b, t, c, dtype=dtype), "pad_mask": _pad_mask(b, t, case)}


def _power_norm_stats_reference(a):
    x = a["input"].double()
    valid = ~a["pad_mask"] if a["pad_mask"] is not None else torch.ones(x.shape[:2], dtype=torch.bool)
    tokens = x[valid]
    return tokens.pow(2).sum(0), torch.tensor(float(tokens.shape[0]), dtype=F64)


def _build_power_norm(dtype, pdtype, case):
    b, t, c = PN_SHAPES.get(case, PN_SHAPES["base"])
    return {
        "input": randn(b, t, c, dtype=dtype),
        "scale": positive(c, dtype=acc(dtype)),
        "weight": randn(c, dtype=pdtype),
        "bias": randn(c, dtype=pdtype),
        "ema_gz": randn(c, dtype=acc(dtype)),
        "pad_mask": _pad_mask(b, t, case),
        "alpha_bkw": 0.9,
    }


def _power_norm_reference(a):
    return (a["input"].double() * a["scale"].double() * a["weight"].double() + a["bias"].double(),)


def _build_power_norm_backward(dtype, pdtype, case):
    args = _build_power_norm(dtype, pdtype, case)
    del args["bias"]
    args = {"grad_out": randn(*args["input"].shape, dtype=dtype), **args, "has_bias": case != "odd"}
    return args


def _power_norm_backward_reference(a):
    dx, dw, db, _ = ref.power_norm_backward(*a.values())
    return dx, dw, db


def _power_norm_backward_mutated(a):
    return {"ema_gz": ref.power_norm_backward(*a.values())[3]}


# ---------------------------------------------------------------------------------------------------
# GroupNorm: (N, C, H, W) in groups; size-1 planes, 3-d and 5-d inputs, an empty batch.
# ---------------------------------------------------------------------------------------------------

GN_SHAPES = {
    "base": ((2, 6, 3, 5), 3),
    "silu": ((2, 8, 4, 4), 2),
    "instance": ((2, 4, 7), 4),
    "plane1": ((3, 6, 1, 1), 2),
    "5d": ((1, 4, 2, 3, 2), 2),
    "empty": ((0, 4, 2, 2), 2),
}


def _gn_stats(x, groups, eps=1e-5):
    grouped = x.double().reshape(x.shape[0], groups, math.prod(x.shape[1:]) // groups)
    mean = grouped.mean(2)
    return mean, torch.rsqrt(((grouped - mean[..., None]) ** 2).mean(2) + eps)


def _build_group_norm(dtype, pdtype, case):
    shape, groups = GN_SHAPES[case]
    c = shape[1]
    return {
        "input": randn(*shape, dtype=dtype),
        "num_groups": groups,
        "weight": randn(c, dtype=pdtype),
        "bias": randn(c, dtype=pdtype),
        "eps": 1e-5,
        "activation": "silu" if case == "silu" else None,
    }


def _group_norm_reference(a):
    mean, rstd = _gn_stats(a["input"], a["num_groups"], a["eps"])
    out = ref.group_norm(a["input"], a["num_groups"], a["weight"], a["bias"], a["eps"], a["activation"])
    return out, mean, rstd


def _build_group_norm_backward(dtype, pdtype, case):
    shape, groups = GN_SHAPES[case]
    x = randn(*shape, dtype=dtype)
    mean, rstd = _gn_stats(x, groups)
    c = shape[1]
    return {
        "grad_out": randn(*shape, dtype=dtype),
        "input": x,
        "num_groups": groups,
        "mean": mean.to(acc(dtype)),
        "rstd": rstd.to(acc(dtype)),
        "weight": randn(c, dtype=pdtype),
        "bias": randn(c, dtype=pdtype),
        "activation": "silu" if case == "silu" else None,
    }


# ---------------------------------------------------------------------------------------------------
# BatchNorm: (N, C, H, W) and (N, C) inputs; the padding mask needs (N, C).
# ---------------------------------------------------------------------------------------------------

BN_SHAPES = {
    "base": (4, 6, 3, 5),
    "rows": (9, 5),
    "masked": (9, 5),
    "odd": (3, 37, 1, 3),
    "3d": (2, 3, 7),
    "empty": (0, 4, 2, 2),
    "size1": (1, 3, 1, 1),
}
BN_CASES = tuple(BN_SHAPES)
BN_MASKED_CASES = ("masked", "allpad", "rows")


def _bn_shape(case):
    return BN_SHAPES.get(case, BN_SHAPES["masked"])


def _bn_mask(case, n):
    if case == "masked":
        mask = torch.zeros(n, dtype=torch.bool)
        mask[[1, 4, n - 1]] = True
        return mask
    if case == "allpad":
        return torch.ones(n, dtype=torch.bool)
    return None


def _bn_true_stats(x, mask):
    count, mean, m2 = ref.batch_norm_stats(x, mask)
    return mean, torch.rsqrt(m2 / max(count, 1) + 1e-5)


def _build_batch_norm_stats(dtype, pdtype, case):
    shape = _bn_shape(case)
    return {"input": randn(*shape, dtype=dtype), "pad_mask": _bn_mask(case, shape[0])}


def _batch_norm_stats_reference(a):
    count, mean, m2 = ref.batch_norm_stats(a["input"], a["pad_mask"])
    return torch.tensor(count, dtype=F64), mean, m2


def _build_batch_norm_elemt(dtype, pdtype, case):
    shape = _bn_shape(case)
    c = shape[1]
    return {
        "input": randn(*shape, dtype=dtype),
        "mean": randn(c, dtype=acc(dtype)),
        "invstd": positive(c, dtype=acc(dtype)),
        "weight": randn(c, dtype=pdtype),
        "bias": randn(c, dtype=pdtype),
        "pad_mask": _bn_mask(case, shape[0]),
    }


def _bn_view(t, x):
    return t.double().view((1, -1) + (1,) * (x.dim() - 2))


def _batch_norm_elemt_reference(a):
    x = a["input"]
    y = (x.double() - _bn_view(a["mean"], x)) * _bn_view(a["invstd"], x) * _bn_view(a["weight"], x)
    y = y + _bn_view(a["bias"], x)
    if a["pad_mask"] is not None:
        y = y.masked_fill(a["pad_mask"].view(-1, 1), 0.0)
    return (y,)


def _build_batch_norm_train(dtype, pdtype, case):
    shape = _bn_shape(case)
    c = shape[1]
    return {
        "input": randn(*shape, dtype=dtype),
        "weight": randn(c, dtype=pdtype),
        "bias": randn(c, dtype=pdtype),
        "eps": 1e-5,
        "running_mean": randn(c, dtype=pdtype),
        "running_var": positive(c, dtype=pdtype),
        "momentum": 0.3,
    }


def _batch_norm_train_reference(a):
    x = a["input"]
    count, mean, m2 = ref.batch_norm_stats(x)
    out = ref.batch_norm(x, None, None, a["weight"], a["bias"], True, 0.1, a["eps"])[0]
    invstd = torch.rsqrt(m2 / count + a["eps"]) if count else None
    return out, mean, m2, invstd


def _batch_norm_train_mutated(a):
    _, running_mean, running_var = ref.batch_norm(
        a["input"], a["running_mean"], a["running_var"], None, None, True, a["momentum"], a["eps"]
    )
    return {"running_mean": running_mean, "running_var": running_var}


def _build_batch_norm_train_backward(dtype, pdtype, case):
    args = _build_batch_norm_backward_reduce(dtype, pdtype, case)
    del args["pad_mask"]
    args["weight"] = randn(args["input"].shape[1], dtype=pdtype)
    return args


def _batch_norm_train_backward_reference(a):
    sum_dy, sum_dy_xhat = ref.batch_norm_backward_reduce(a["grad_out"], a["input"], a["mean"], a["invstd"])
    count = max(a["input"].numel() // max(a["input"].shape[1], 1), 1)
    dx = ref.batch_norm_backward_elemt(
        a["grad_out"], a["input"], a["mean"], a["invstd"], a["weight"], sum_dy / count, sum_dy_xhat / count
    )
    return dx, sum_dy, sum_dy_xhat


def _build_batch_norm_backward_reduce(dtype, pdtype, case):
    shape = _bn_shape(case)
    x = randn(*shape, dtype=dtype)
    mask = _bn_mask(case, shape[0])
    mean, invstd = _bn_true_stats(x, mask)
    return {
        "grad_out": randn(*shape, dtype=dtype),
        "input": x,
        "mean": mean.to(acc(dtype)),
        "invstd": invstd.to(acc(dtype)),
        "pad_mask": mask,
    }


def _build_batch_norm_backward_elemt(dtype, pdtype, case):
    args = _build_batch_norm_backward_reduce(dtype, pdtype, case)
    c = args["input"].shape[1]
    mask = args.pop("pad_mask")
    args["weight"] = randn(c, dtype=pdtype)
    args["mean_dy"] = None if case == "odd" else randn(c, dtype=acc(dtype))
    args["mean_dy_xhat"] = None if case == "odd" else randn(c, dtype=acc(dtype))
    args["pad_mask"] = mask
    return args


def _one(fn):
    """The reference of a one-output op: fn called with the op's arguments in schema order."""
    return lambda a: (fn(*a.values()),)


def _tuple(fn):
    """The reference of a multi-output op: fn called with the op's arguments in schema order."""
    return lambda a: tuple(fn(*a.values()))


# The tensors whose padding rows (per the op's mask) the padding checks fill.
PADDED = ("input", "grad_out")

SPECS: Dict[str, OpSpec] = {
    "layer_norm": OpSpec(_build_row_forward(False, False), _row_forward_reference(False, False), ROW_CASES),
    "rms_norm": OpSpec(_build_row_forward(True, False), _row_forward_reference(True, False), ROW_CASES),
    "add_layer_norm": OpSpec(_build_row_forward(False, True), _row_forward_reference(False, True), ROW_CASES),
    "add_rms_norm": OpSpec(_build_row_forward(True, True), _row_forward_reference(True, True), ROW_CASES),
    "layer_norm_backward": OpSpec(_build_row_backward(False), _row_backward_reference(False), ROW_CASES),
    "rms_norm_backward": OpSpec(_build_row_backward(True), _row_backward_reference(True), ROW_CASES),
    "weight_norm": OpSpec(
        _build_weight_norm,
        lambda a: (ref.weight_norm(a["v"], a["g"], a["dim"]), _wn_norm(a["v"], a["dim"]).reshape(a["g"].shape)),
        tuple(WN_DIMS),
        has_params=False,
    ),
    "weight_norm_backward": OpSpec(
        _build_weight_norm_backward, _tuple(ref.weight_norm_backward), tuple(WN_DIMS), has_params=False
    ),
    "power_norm_stats": OpSpec(
        _build_power_norm_stats,
        _power_norm_stats_reference,
        ("base", "odd", "empty", "size1", "allpad"),
        has_params=False,
        pad="pad_mask",
        padded=PADDED,
    ),
    "power_norm": OpSpec(
        _build_power_norm,
        _power_norm_reference,
        ("base", "odd", "empty", "size1"),
        pad="pad_mask",
        padded=PADDED,
        real_rows_only=(0,),
    ),
    "power_norm_backward": OpSpec(
        _build_power_norm_backward,
        _power_norm_backward_reference,
        ("base", "odd", "empty", "size1", "allpad"),
        pad="pad_mask",
        padded=PADDED,
        real_rows_only=(0,),
    ),
    "group_norm": OpSpec(_build_group_norm, _group_norm_reference, tuple(GN_SHAPES), channel_args=("input",)),
    "group_norm_backward": OpSpec(
        _build_group_norm_backward,
        _tuple(ref.group_norm_backward),
        tuple(GN_SHAPES),
        channel_args=("grad_out", "input"),
    ),
    "batch_norm_stats": OpSpec(
        _build_batch_norm_stats,
        _batch_norm_stats_reference,
        BN_CASES + ("allpad",),
        has_params=False,
        channel_args=("input",),
        pad="pad_mask",
        padded=PADDED,
        layout_cases=("base", "masked"),
    ),
    "batch_norm_elemt": OpSpec(
        _build_batch_norm_elemt,
        _batch_norm_elemt_reference,
        BN_CASES + ("allpad",),
        channel_args=("input",),
        pad="pad_mask",
        padded=PADDED,
        layout_cases=("base", "masked"),
    ),
    "batch_norm_train": OpSpec(_build_batch_norm_train, _batch_norm_train_reference, BN_CASES, channel_args=("input",)),
    "batch_norm_train_backward": OpSpec(
        _build_batch_norm_train_backward,
        _batch_norm_train_backward_reference,
        BN_CASES,
        channel_args=("grad_out", "input"),
    ),
    "batch_norm_backward_reduce": OpSpec(
        _build_batch_norm_backward_reduce,
        _tuple(ref.batch_norm_backward_reduce),
        BN_CASES + ("allpad",),
        has_params=False,
        channel_args=("grad_out", "input"),
        pad="pad_mask",
        padded=PADDED,
        layout_cases=("base", "masked"),
    ),
    "batch_norm_backward_elemt": OpSpec(
        _build_batch_norm_backward_elemt,
        _one(ref.batch_norm_backward_elemt),
        BN_CASES + ("allpad",),
        channel_args=("grad_out", "input"),
        pad="pad_mask",
        padded=PADDED,
        layout_cases=("base", "masked"),
    ),
}

# What an op writes to, beyond its outputs: name -> float64 expected value after the call.
MUTATED_REFERENCE = {
    "power_norm_backward": _power_norm_backward_mutated,
    "batch_norm_train": _batch_norm_train_mutated,
}


def schema_ops() -> List[str]:
    """Every op the norm_ext library declares."""
    return sorted(
        name.split("::")[1] for name in torch._C._dispatch_get_all_op_names() if name.startswith("norm_ext::")
    )


def schema(op: str):
    return getattr(torch.ops.norm_ext, op).default._schema


def mutated_args(op: str) -> Tuple[str, ...]:
    return tuple(a.name for a in schema(op).arguments if a.alias_info is not None and a.alias_info.is_write)


# ---------------------------------------------------------------------------------------------------
# Layout variants of one tensor; each keeps the shape and dtype and changes how the memory is laid out
# (the expanded one also its values: every slice along one dim is the first).
# ---------------------------------------------------------------------------------------------------


def non_contiguous(t: Tensor) -> Optional[Tensor]:
    if t.dim() == 0 or t.numel() <= 1:
        return None
    buffer = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
    view = buffer[..., ::2]
    view.copy_(t)
    return view


def storage_offset(t: Tensor) -> Optional[Tensor]:
    if t.numel() == 0:
        return None
    buffer = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    view = buffer[1:].view(t.shape)
    view.copy_(t)
    return view


def expanded(t: Tensor) -> Optional[Tensor]:
    dims = [d for d in range(t.dim()) if t.shape[d] > 1]
    if not dims:
        return None
    return t.narrow(dims[0], 0, 1).expand(t.shape)


def channels_last(t: Tensor) -> Optional[Tensor]:
    if t.dim() != 4 or t.numel() == 0:
        return None
    return t.contiguous(memory_format=torch.channels_last)


LAYOUTS = {"noncontig": non_contiguous, "offset": storage_offset, "expanded": expanded, "channels_last": channels_last}
ARG_LAYOUTS = ("noncontig", "offset", "expanded")


def _pdtypes(spec: OpSpec, dtype: torch.dtype) -> List[torch.dtype]:
    if not spec.has_params or dtype in (F32, F64):
        return [dtype]
    return [F32, dtype]


def _dname(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def samples(op: str, seed: int = 0) -> Iterator[Sample]:
    """Every sample of ``op``: each case in each dtype and parameter dtype; then, for its layout cases
    in float32 and bfloat16 (float32 parameters), each layout variant of each tensor argument, and
    channels-last for each channel argument and for all of them together."""
    spec = SPECS[op]
    mutated = mutated_args(op)
    gen_seed = itertools.count(seed)

    def make(dtype, pdtype, case):
        torch.manual_seed(next(gen_seed))
        return spec.build(dtype, pdtype, case)

    for dtype in spec.dtypes:
        for pdtype in _pdtypes(spec, dtype):
            for case in spec.cases:
                desc = f"{case}-{_dname(dtype)}" + (f"-params_{_dname(pdtype)}" if pdtype != dtype else "")
                yield Sample(op, make(dtype, pdtype, case), desc)
    for dtype, case in itertools.product((F32, BF16), spec.layout_cases or spec.cases[:1]):
        base = make(dtype, F32, case)
        tensors = [n for n, v in base.items() if isinstance(v, Tensor)]
        for name, layout in itertools.product(tensors, ARG_LAYOUTS):
            if (layout == "expanded" and name in mutated) or LAYOUTS[layout](base[name]) is None:
                continue
            yield Sample(op, base, f"{case}-{name}_{layout}-{_dname(dtype)}", ((name, layout),))
        cl_args = [
            n for n in spec.channel_args if isinstance(base.get(n), Tensor) and channels_last(base[n]) is not None
        ]
        for names in [[n] for n in cl_args] + ([cl_args] if len(cl_args) > 1 else []):
            layouts = tuple((n, "channels_last") for n in names)
            yield Sample(op, base, f"{case}-{'+'.join(names)}_channels_last-{_dname(dtype)}", layouts)


def all_samples() -> List[Sample]:
    return [s for op in sorted(SPECS) for s in samples(op)]
