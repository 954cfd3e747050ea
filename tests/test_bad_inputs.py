"""The bad-input table, generated from each op's schema and its first float32 sample (tests/op_samples.py):
for every tensor argument an integer dtype, a wrong shape and a wrong rank, a device other than the
input's where a GPU exists; a negative eps; groups that do not divide the channels; then the functional
layer's own arguments (momentum). Each must raise a Python exception whose message names the argument:
never a crash, a hang or a silent answer."""

from typing import Dict, List, NamedTuple

import pytest
import torch
from conftest import needs_cuda
from op_samples import SPECS, call, expanded, mutated_args, samples, schema

import norm_ext.functional as F


class BadInput(NamedTuple):
    op: str
    args: Dict[str, object]
    what: str
    # the message must name this (the argument, as the schema calls it)
    names: str


def _first_float32(op):
    return next(s for s in samples(op) if s.desc.endswith("float32") and not s.layouts).args()


def _wrong_dtype(t):
    return t.float() if t.dtype == torch.bool else t.to(torch.int32)


def _wrong_shape(t):
    if t.dim() == 0:
        return t.reshape(1).expand(2)
    return t.narrow(-1, 0, t.shape[-1] - 1) if t.shape[-1] > 1 else t.expand(*t.shape[:-1], 2)


def bad_inputs() -> List[BadInput]:
    table = []
    for op in sorted(SPECS):
        base = _first_float32(op)
        tensors = [n for n, v in base.items() if isinstance(v, torch.Tensor)]
        for name in tensors:
            t = base[name]
            table.append(BadInput(op, dict(base, **{name: _wrong_dtype(t)}), f"{name}_dtype", name))
            if name == tensors[0]:
                continue  # the anchor: a reshaped input is another valid input for most ops
            table.append(BadInput(op, dict(base, **{name: _wrong_shape(t)}), f"{name}_shape", name))
            table.append(BadInput(op, dict(base, **{name: t.unsqueeze(0)}), f"{name}_rank", name))
        for name in mutated_args(op):
            table.append(BadInput(op, dict(base, **{name: expanded(base[name])}), f"{name}_expanded_written", name))
        if "eps" in base:
            table.append(BadInput(op, dict(base, eps=-1e-5), "eps_negative", "eps"))
            table.append(BadInput(op, dict(base, eps=float("nan")), "eps_nan", "eps"))
        if "num_groups" in base:
            channels = base["input"].shape[1]
            table.append(BadInput(op, dict(base, num_groups=channels - 1), "groups_indivisible", "num_groups"))
            table.append(BadInput(op, dict(base, num_groups=0), "groups_zero", "num_groups"))
    return table


TABLE = bad_inputs()


@pytest.mark.parametrize("bad", TABLE, ids=lambda b: f"{b.op}-{b.what}")
def test_bad_input_raises_naming_the_argument(bad):
    with pytest.raises((ValueError, TypeError, RuntimeError, IndexError)) as info:
        call(bad.op, bad.args)
    assert bad.names in str(info.value), f"message does not name {bad.names!r}: {info.value}"
    assert bad.op in str(info.value), f"message does not name the op {bad.op!r}: {info.value}"


def test_every_op_and_tensor_argument_is_in_the_table():
    ops = {b.op for b in TABLE}
    assert ops == set(SPECS)
    for op in SPECS:
        tensors = {a.name for a in schema(op).arguments if "Tensor" in str(a.type)}
        named = {b.names for b in TABLE if b.op == op}
        assert tensors <= named | {n for n in tensors if _first_float32(op).get(n) is None}, op


@needs_cuda
@pytest.mark.parametrize("op", sorted(SPECS))
def test_argument_on_another_device_raises_naming_it(op):
    base = {n: v.cuda() if isinstance(v, torch.Tensor) else v for n, v in _first_float32(op).items()}
    tensors = [n for n, v in base.items() if isinstance(v, torch.Tensor)]
    for name in tensors[1:]:
        with pytest.raises((ValueError, TypeError, RuntimeError)) as info:
            call(op, dict(base, **{name: base[name].cpu()}))
        assert name in str(info.value), f"{op}: message does not name {name!r}: {info.value}"


MOMENTUM_CALLS = {
    "batch_norm": lambda x, m: F.batch_norm(x, torch.zeros(3), torch.ones(3), training=True, momentum=m),
    "instance_norm": lambda x, m: F.instance_norm(x, torch.zeros(3), torch.ones(3), use_input_stats=True, momentum=m),
}


@pytest.mark.parametrize("momentum", [-0.1, 1.5, float("nan")])
@pytest.mark.parametrize("fn", sorted(MOMENTUM_CALLS))
def test_out_of_range_momentum_raises(fn, momentum):
    with pytest.raises(ValueError, match="momentum"):
        MOMENTUM_CALLS[fn](torch.randn(4, 3, 5), momentum)
