"""The generic checks over every sample of every op (tests/op_samples.py): the outputs match the
float64 reference, no input the schema does not mark as written changes, padding never reaches a
result, and torch.library.opcheck passes; on the CPU kernels, the SIMT backend and a GPU."""

import inspect

import pytest
import torch
from conftest import DEVICES
from op_samples import (
    ARG_LAYOUTS,
    MUTATED_REFERENCE,
    PAD_FILLS,
    SPECS,
    all_samples,
    call,
    mutated_args,
    schema,
    schema_ops,
)
from tolerances import BACKWARD, FORWARD, assert_close_to_reference

SAMPLES = all_samples()
# An expanded padded tensor repeats its first rows over the others, padding rows into real ones.
PADDED_SAMPLES = [
    s
    for s in SAMPLES
    if s.padding() is not None and not any(n in s.spec.padded and lay == "expanded" for n, lay in s.layouts)
]


def _ids(sample):
    return sample.id


def test_every_schema_op_has_samples():
    assert set(schema_ops()) == set(SPECS), "an op was added to csrc/schema.cpp without samples in op_samples.py"
    for op in SPECS:
        covered = {name for s in SAMPLES if s.op == op for name, _ in s.layouts}
        tensors = {a.name for a in schema(op).arguments if "Tensor" in str(a.type)}
        assert tensors <= covered, f"{op}: no layout variants of {sorted(tensors - covered)}"


def _table(op):
    return BACKWARD if op.endswith("backward") or "reduce" in op or op.endswith("stats") else FORWARD


def _real_rows(t, mask):
    # An output laid out like the padded input: its padding rows are unspecified unless the op says.
    return t[~mask.to(t.device)] if mask is not None and t.shape[: mask.dim()] == mask.shape else t


def _snapshot(args):
    return {n: v.clone() for n, v in args.items() if isinstance(v, torch.Tensor)}


def _assert_bitwise(actual, expected, what):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sample", SAMPLES, ids=_ids)
def test_matches_reference_and_writes_only_what_schema_says(sample, device):
    args = sample.args(device)
    cpu_args = sample.args()
    expected = sample.spec.reference(cpu_args)
    expected_mutations = MUTATED_REFERENCE[sample.op](cpu_args) if sample.op in MUTATED_REFERENCE else {}
    before = _snapshot(args)
    outputs = call(sample.op, args)
    assert len(expected) <= len(outputs)
    mask = sample.padding()
    for i, (out, exp) in enumerate(zip(outputs, expected)):
        if exp is None:
            continue
        assert out.device.type == torch.device(device).type, f"output {i} on {out.device}"
        assert out.shape == exp.shape, f"output {i}: shape {tuple(out.shape)}, expected {tuple(exp.shape)}"
        if i in sample.spec.real_rows_only:
            out, exp = _real_rows(out, mask), _real_rows(exp, mask)
        assert_close_to_reference(
            out,
            exp,
            out.dtype if out.is_floating_point() else torch.float64,
            _table(sample.op),
            f"{sample.id} output {i}",
        )
    written = set(mutated_args(sample.op))
    for name, old in before.items():
        if name in written:
            assert_close_to_reference(args[name], expected_mutations[name], old.dtype, BACKWARD, f"{name} (written)")
        else:
            _assert_bitwise(args[name], old, f"{sample.id}: input {name} was written to")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sample", PADDED_SAMPLES, ids=_ids)
def test_padding_never_reaches_a_result(sample, device):
    """Whatever the padding rows hold, zeros, huge values, NaN or inf, the outputs over the real rows,
    the statistics and what the op writes are bitwise those of zero padding."""
    mask = sample.padding()
    runs = {}
    for fill_name, fill in PAD_FILLS.items():
        args = sample.with_padding(fill).args(device)
        outputs = call(sample.op, args)
        written = [args[n] for n in mutated_args(sample.op)]
        runs[fill_name] = [_real_rows(t, mask) for t in outputs] + written
    for fill_name, run in runs.items():
        for i, (t, t0) in enumerate(zip(run, runs["zeros"])):
            _assert_bitwise(t, t0, f"{sample.id}: result {i} with {fill_name} padding")


# opcheck's AOT-autograd trace with dynamic shapes costs two thirds of its time. A variant with one
# argument strided, offset or expanded (ARG_LAYOUTS) changes neither the fake kernel's shape logic nor
# the autograd formula, only memory the fake kernel never reads, and test_faketensor checks each
# variant's fake outputs against the real ones; so the trace runs on the other samples (every op,
# case, dtype and parameter dtype, and channels-last, whose output strides the fake kernel decides).
ALL_OPCHECKS = inspect.signature(torch.library.opcheck).parameters["test_utils"].default
OPCHECKS_BUT_AOT = tuple(u for u in ALL_OPCHECKS if u != "test_aot_dispatch_dynamic")


@pytest.mark.parametrize("sample", SAMPLES, ids=_ids)
def test_opcheck(sample):
    one_arg_layout = any(layout in ARG_LAYOUTS for _, layout in sample.layouts)
    utils = OPCHECKS_BUT_AOT if one_arg_layout else ALL_OPCHECKS
    torch.library.opcheck(
        getattr(torch.ops.norm_ext, sample.op).default, tuple(sample.args().values()), test_utils=utils
    )
