"""Benchmark cases: what each op is called with, its float64 reference, and the bytes it must move.

Every op is described by an :class:`OpSpec` whose calling convention is norm_ext's public function
(the torch.nn.functional signature); providers supply a function with that signature. A
:class:`Case` is one op at one shape and dtype, with its inputs built once and shared by every
provider, so all of them see the same data.

Bytes moved are the algorithmic minimum, the same for every provider, so GB/s compares like with
like and the measured copy bandwidth is the ceiling:

* fwd: read the inputs (x, and the residual for the fused add-norms), write the outputs (y, and h),
  plus the parameters read;
* bwd: read the saved activation (x, or h) and dy, write dx, plus the parameters read and their
  gradients written;
* fwd+bwd: the sum of the two.

Per-row/per-channel statistics are a few bytes per row and are not counted.

The row norms' CUDA kernels are held to this model byte for byte (the distinct bytes of activations
and parameters each kernel touches) by tests/test_simt_traffic.py, on the checked SIMT build.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import reference

PASSES = ("fwd", "bwd", "fwd+bwd")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
EPS = 1e-5


@dataclass(frozen=True)
class Variant:
    """A layout or option of an op: ``channels_last`` memory format, or GroupNorm's fused SiLU."""

    label: str
    channels_last: bool = False
    activation: str | None = None


@dataclass
class Case:
    """One op, variant, shape and dtype; ``inputs`` are the positional arguments of the op's call."""

    op: str
    variant: Variant
    shape: Tuple[int, ...]
    dtype: torch.dtype
    inputs: Dict[str, object]
    grad_names: Tuple[str, ...]
    param_bytes: int
    label: str = ""
    device: str = "cpu"
    reference_cache: Dict[str, Tensor] = field(default_factory=dict)

    @property
    def dtype_name(self) -> str:
        return next(k for k, v in DTYPES.items() if v == self.dtype)

    @property
    def hidden(self) -> int:
        """The plots' x axis: the normalized length (row norms), or channels (BatchNorm, GroupNorm...)."""
        return self.shape[-1] if self.op in ROW_NORMS or self.op == "weight_norm" else self.shape[1]


@dataclass(frozen=True)
class OpSpec:
    """How to build, call and check one op. ``call(fn, inputs)`` runs a provider's function."""

    name: str
    make_inputs: Callable[[Tuple[int, ...], torch.dtype, Variant, str], Dict[str, object]]
    call: Callable[[Callable, Dict[str, object]], object]
    reference: Callable[[Dict[str, object]], Tensor]
    grad_names: Tuple[str, ...]
    activation_inputs: int  # activations read by the forward (x; x and residual)
    activation_outputs: int  # activations written by the forward (y; y and h)
    variants: Tuple[Variant, ...] = (Variant("default"),)
    stateful: Tuple[str, ...] = ()  # inputs updated in place (running stats): a copy per provider


def _randn(shape, dtype, device, requires_grad=False, channels_last=False) -> Tensor:
    t = torch.randn(shape, dtype=torch.float32, device=device)
    if channels_last:
        t = t.contiguous(memory_format=torch.channels_last)
    return t.to(dtype).requires_grad_(requires_grad)


def _param(n: int, dtype, device, offset: float = 1.0) -> Tensor:
    return (offset + 0.1 * torch.randn(n, device=device)).to(dtype).requires_grad_(True)


# --- row norms --------------------------------------------------------------------------------------


def _row_inputs(shape, dtype, variant, device, *, bias=True, residual=False):
    hidden = shape[-1]
    inputs = {"input": _randn(shape, dtype, device, True)}
    if residual:
        inputs["residual"] = _randn(shape, dtype, device, True)
    inputs["normalized_shape"] = (hidden,)
    inputs["weight"] = _param(hidden, dtype, device)
    if bias:
        inputs["bias"] = _param(hidden, dtype, device, offset=0.0)
    inputs["eps"] = EPS
    return inputs


def _f64_rms(i, x):
    return reference.rms_norm(x, i["normalized_shape"], i["weight"], i["eps"])


ROW_NORMS = ("layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm")

# --- BatchNorm / GroupNorm / InstanceNorm / weight norm --------------------------------------------
# Their float64 references come from norm_ext.reference where this build has them, else from torch's
# own functional ops run in float64 (exact to ~1e-15, far below every tolerance here).


def _bn_inputs(shape, dtype, variant, device):
    c = shape[1]
    return {
        "input": _randn(shape, dtype, device, True, variant.channels_last),
        "running_mean": torch.zeros(c, dtype=dtype, device=device),
        "running_var": torch.ones(c, dtype=dtype, device=device),
        "weight": _param(c, dtype, device),
        "bias": _param(c, dtype, device, offset=0.0),
        "training": True,
        "momentum": 0.1,
        "eps": EPS,
    }


def _bn_reference(i):
    f64 = {k: (v.double() if isinstance(v, Tensor) else v) for k, v in i.items()}
    if hasattr(reference, "batch_norm"):
        return reference.batch_norm(
            f64["input"], None, None, f64["weight"], f64["bias"], True, f64["momentum"], f64["eps"]
        )[0]
    return F.batch_norm(f64["input"], None, None, f64["weight"], f64["bias"], True, f64["momentum"], f64["eps"])


def _gn_groups(channels: int) -> int:
    return math.gcd(32, channels)


def _gn_inputs(shape, dtype, variant, device):
    c = shape[1]
    return {
        "input": _randn(shape, dtype, device, True, variant.channels_last),
        "num_groups": _gn_groups(c),
        "weight": _param(c, dtype, device),
        "bias": _param(c, dtype, device, offset=0.0),
        "eps": EPS,
    }


def _gn_reference(i, activation):
    x, w, b = (i[k].double() for k in ("input", "weight", "bias"))
    if hasattr(reference, "group_norm"):
        return reference.group_norm(x, i["num_groups"], w, b, i["eps"], activation)
    y = F.group_norm(x, i["num_groups"], w, b, i["eps"])
    return F.silu(y) if activation == "silu" else y


def _in_inputs(shape, dtype, variant, device):
    c = shape[1]
    return {
        "input": _randn(shape, dtype, device, True),
        "running_mean": None,
        "running_var": None,
        "weight": _param(c, dtype, device),
        "bias": _param(c, dtype, device, offset=0.0),
        "use_input_stats": True,
        "momentum": 0.1,
        "eps": EPS,
    }


def _in_reference(i):
    x, w, b = (i[k].double() for k in ("input", "weight", "bias"))
    if hasattr(reference, "instance_norm"):
        return reference.instance_norm(x, w, b, i["eps"])
    return F.instance_norm(x, None, None, w, b, True, 0.1, i["eps"])


def _wn_inputs(shape, dtype, variant, device):
    v = _randn(shape, dtype, device, True)
    g = (1.0 + 0.1 * torch.randn((shape[0],) + (1,) * (len(shape) - 1), device=device)).to(dtype)
    return {"v": v, "g": g.requires_grad_(True), "dim": 0}


def _wn_reference(i):
    v, g = i["v"].double(), i["g"].double()
    if hasattr(reference, "weight_norm"):
        return reference.weight_norm(v, g, i["dim"])
    return torch._weight_norm(v, g, i["dim"])


def _positional(*names):
    return lambda fn, i: fn(*(i[n] for n in names))


def _gn_call(fn, i, activation):
    return fn(i["input"], i["num_groups"], i["weight"], i["bias"], i["eps"], activation=activation)


_NCHW, _NHWC = Variant("nchw"), Variant("nhwc", channels_last=True)

OPS: Dict[str, OpSpec] = {
    "layer_norm": OpSpec(
        "layer_norm",
        lambda s, d, v, dev: _row_inputs(s, d, v, dev),
        _positional("input", "normalized_shape", "weight", "bias", "eps"),
        lambda i: reference.layer_norm(i["input"], i["normalized_shape"], i["weight"], i["bias"], i["eps"]),
        ("input", "weight", "bias"),
        1,
        1,
    ),
    "rms_norm": OpSpec(
        "rms_norm",
        lambda s, d, v, dev: _row_inputs(s, d, v, dev, bias=False),
        _positional("input", "normalized_shape", "weight", "eps"),
        lambda i: _f64_rms(i, i["input"]),
        ("input", "weight"),
        1,
        1,
    ),
    "add_layer_norm": OpSpec(
        "add_layer_norm",
        lambda s, d, v, dev: _row_inputs(s, d, v, dev, residual=True),
        _positional("input", "residual", "normalized_shape", "weight", "bias", "eps"),
        lambda i: reference.layer_norm(
            reference.residual_stream(i["input"], i["residual"]),
            i["normalized_shape"],
            i["weight"],
            i["bias"],
            i["eps"],
        ),
        ("input", "residual", "weight", "bias"),
        2,
        2,
    ),
    "add_rms_norm": OpSpec(
        "add_rms_norm",
        lambda s, d, v, dev: _row_inputs(s, d, v, dev, bias=False, residual=True),
        _positional("input", "residual", "normalized_shape", "weight", "eps"),
        lambda i: _f64_rms(i, reference.residual_stream(i["input"], i["residual"])),
        ("input", "residual", "weight"),
        2,
        2,
    ),
    "batch_norm": OpSpec(
        "batch_norm",
        _bn_inputs,
        _positional("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"),
        _bn_reference,
        ("input", "weight", "bias"),
        1,
        1,
        variants=(_NCHW, _NHWC),
        stateful=("running_mean", "running_var"),
    ),
    "group_norm": OpSpec(
        "group_norm",
        _gn_inputs,
        lambda fn, i: _gn_call(fn, i, None),
        lambda i: _gn_reference(i, None),
        ("input", "weight", "bias"),
        1,
        1,
        variants=(_NCHW, _NHWC),
    ),
    "group_norm_silu": OpSpec(
        "group_norm_silu",
        _gn_inputs,
        lambda fn, i: _gn_call(fn, i, "silu"),
        lambda i: _gn_reference(i, "silu"),
        ("input", "weight", "bias"),
        1,
        1,
        variants=(_NCHW, _NHWC),
    ),
    "instance_norm": OpSpec(
        "instance_norm",
        _in_inputs,
        _positional("input", "running_mean", "running_var", "weight", "bias", "use_input_stats", "momentum", "eps"),
        _in_reference,
        ("input", "weight", "bias"),
        1,
        1,
    ),
    "weight_norm": OpSpec(
        "weight_norm",
        _wn_inputs,
        _positional("v", "g", "dim"),
        _wn_reference,
        ("v", "g"),
        1,
        1,
    ),
}

# The function each op needs from norm_ext (group_norm_silu is group_norm with activation="silu").
NORM_EXT_FUNCTION = {name: ("group_norm" if name == "group_norm_silu" else name) for name in OPS}

# --- sizes ------------------------------------------------------------------------------------------

# Default sweeps. CPU sizes make every input at least 64 MB, twice this machine's 32 MB L3, so the
# numbers are DRAM bandwidth, not cache bandwidth. GPU: M = 32K rows, as in the README targets.
CPU_ROW_HIDDEN = (1024, 4096, 16384)
CPU_ROW_BYTES = 64 << 20
GPU_ROW_HIDDEN = (1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144)
GPU_ROWS = 32768
GPU_ROW_MAX_BYTES = 2 << 30  # 32K rows of 128K bf16 would be 8 GB; fewer rows past this

DEFAULT_SHAPES = {
    # (N, C, H, W) ResNet-like; (T*B, C) sequence BatchNorm (speech/transformer-BN style).
    "batch_norm": {
        "cpu": [(32, 128, 56, 56), (32, 512, 28, 28), (16384, 1024)],
        "cuda": [(256, 64, 56, 56), (256, 256, 28, 28), (65536, 1024)],
    },
    # Stable-Diffusion U-Net GroupNorm(32) shapes.
    "group_norm": {
        "cpu": [(8, 256, 64, 64), (8, 512, 32, 32)],
        "cuda": [(32, 320, 64, 64), (32, 640, 32, 32), (32, 1280, 16, 16)],
    },
    "instance_norm": {"cpu": [(16, 64, 128, 128)], "cuda": [(64, 64, 256, 256)]},
    "weight_norm": {"cpu": [(8192, 4096)], "cuda": [(16384, 16384)]},
}
DEFAULT_SHAPES["group_norm_silu"] = DEFAULT_SHAPES["group_norm"]
QUICK_SHAPES = {
    "row": [(256, 1024), (64, 4096)],
    "batch_norm": [(8, 64, 16, 16), (2048, 256)],
    "group_norm": [(2, 128, 16, 16)],
    "instance_norm": [(4, 32, 32, 32)],
    "weight_norm": [(512, 512)],
}
QUICK_SHAPES["group_norm_silu"] = QUICK_SHAPES["group_norm"]


def parse_size(text: str) -> Tuple[int, ...]:
    """``"4096"`` (a hidden size; rows then fill the default bytes) or ``"ROWSxHIDDEN"`` or ``"NxCxHxW"``."""
    try:
        dims = tuple(int(part) for part in text.lower().split("x"))
    except ValueError as e:
        raise ValueError(
            f"a size must be integers joined by 'x' (e.g. 4096, 8192x4096, 32x64x56x56), got {text!r}"
        ) from e
    if not dims or any(d <= 0 for d in dims):
        raise ValueError(f"sizes must be positive, got {text!r}")
    return dims


def _rows_for(hidden: int, dtype: torch.dtype, device: str) -> int:
    elem = torch.empty((), dtype=dtype).element_size()
    if device == "cpu":
        return max(1, CPU_ROW_BYTES // (hidden * elem))
    return max(1, min(GPU_ROWS, GPU_ROW_MAX_BYTES // (hidden * elem)))


def shapes_for(
    op: str, dtype: torch.dtype, device: str, sizes: Sequence[Tuple[int, ...]] | None, quick: bool
) -> List[Tuple[int, ...]]:
    """The shapes an op runs at: the ``--sizes`` that fit its rank, else the op's default sweep."""
    row_op = op in ROW_NORMS
    if sizes:
        if row_op:
            picked = [s if len(s) == 2 else (_rows_for(s[0], dtype, device), s[0]) for s in sizes if len(s) <= 2]
        elif op == "weight_norm":
            picked = [s for s in sizes if len(s) == 2]
        else:
            picked = [s for s in sizes if len(s) >= (2 if op == "batch_norm" else 3)]
        if picked:
            return picked
    if quick:
        return list(QUICK_SHAPES["row" if row_op else op])
    if row_op:
        hidden = CPU_ROW_HIDDEN if device == "cpu" else GPU_ROW_HIDDEN
        return [(_rows_for(h, dtype, device), h) for h in hidden]
    return list(DEFAULT_SHAPES[op]["cpu" if device == "cpu" else "cuda"])


def make_case(op: str, variant: Variant, shape: Tuple[int, ...], dtype: torch.dtype, device: str) -> Case:
    spec = OPS[op]
    if variant.channels_last and len(shape) != 4:
        raise ValueError("channels_last needs a 4-d shape")
    inputs = spec.make_inputs(shape, dtype, variant, device)
    param_bytes = sum(
        t.numel() * t.element_size()
        for name, t in inputs.items()
        if isinstance(t, Tensor) and name in spec.grad_names and name not in ("input", "residual", "v")
    )
    label = "x".join(str(d) for d in shape) + ("" if variant.label == "default" else f" {variant.label}")
    return Case(op, variant, shape, dtype, inputs, spec.grad_names, param_bytes, label, device)


def variants_for(op: str, shape: Tuple[int, ...]) -> Tuple[Variant, ...]:
    spec = OPS[op]
    if len(shape) == 4:
        return spec.variants
    return tuple(v for v in spec.variants if not v.channels_last)


def activation_bytes(case: Case) -> int:
    x = case.inputs["input"] if "input" in case.inputs else case.inputs["v"]
    return x.numel() * x.element_size()


def bytes_moved(case: Case, pass_name: str) -> int:
    """Minimum DRAM traffic of one call (see the module docstring for the accounting)."""
    spec = OPS[case.op]
    act = activation_bytes(case)
    params = case.param_bytes
    fwd = (spec.activation_inputs + spec.activation_outputs) * act + params
    bwd = 3 * act + 2 * params  # read the saved activation and dy, write dx; read params, write their grads
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[pass_name]


def reference_outputs(case: Case, grad_out: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
    """The float64 output, and the float64 gradients of every grad input for the given ``grad_out``."""
    if "out" not in case.reference_cache:
        spec = OPS[case.op]
        leaves = {n: case.inputs[n].detach().double().requires_grad_(True) for n in case.grad_names}
        f64_inputs = dict(case.inputs)
        f64_inputs.update(leaves)
        out = spec.reference(f64_inputs)
        grads = torch.autograd.grad(out, list(leaves.values()), grad_out.double(), allow_unused=True)
        case.reference_cache["out"] = out.detach()
        for name, g in zip(leaves, grads):
            if g is not None:
                case.reference_cache[f"grad_{name}"] = g
    grads = {k[5:]: v for k, v in case.reference_cache.items() if k.startswith("grad_")}
    return case.reference_cache["out"], grads


def first_output(output) -> Tensor:
    """The normalized output of a call (the fused add-norms also return the residual stream h)."""
    return output[0] if isinstance(output, (tuple, list)) else output
