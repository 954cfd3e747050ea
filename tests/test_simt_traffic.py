"""What the row norms move in global memory, counted per byte by the checked SIMT build
(norm_ext.simt.traffic), against their design: in register and cluster modes the forward reads x once
and writes y once, and the backward reads the saved activation and dy once and writes dx once; the
streaming modes read them twice. The distinct bytes of activations and parameters equal the bench's
byte model (norm_ext.bench.cases.bytes_moved), from which its GB/s and % of copy columns come."""

import pytest
import torch
from conftest import SIMT, needs_checked_simt

from norm_ext import simt
from norm_ext.bench import cases

pytestmark = needs_checked_simt

# (rows, cols, dtype, streaming forward, streaming backward), paths as in test_row_norm.ROW_PATHS.
SHAPES = [
    pytest.param(64, 128, torch.float32, False, False, id="warp"),
    pytest.param(4, 1000, torch.float32, False, False, id="block"),
    pytest.param(4, 4096, torch.bfloat16, False, False, id="block-bf16"),
    pytest.param(2, 20000, torch.float32, False, False, id="cluster"),
    pytest.param(3, 4097, torch.float32, True, True, id="stream"),
]


def _forward(op, i):
    cols = i["normalized_shape"][0]
    x, w = i["input"].detach(), i["weight"].detach()
    if op == "layer_norm":
        y, mean, rstd = torch.ops.norm_ext.layer_norm(x, [cols], w, i["bias"].detach(), i["eps"])
        return {"y": y}, {"mean": mean, "rstd": rstd}
    if op == "rms_norm":
        y, rstd = torch.ops.norm_ext.rms_norm(x, [cols], w, i["eps"])
        return {"y": y}, {"rstd": rstd}
    r = i["residual"].detach()
    y, h, mean, rstd = torch.ops.norm_ext.add_layer_norm(x, r, [cols], w, i["bias"].detach(), i["eps"])
    return {"y": y, "h": h}, {"mean": mean, "rstd": rstd}


def _nbytes(t):
    return t.numel() * t.element_size()


def _assert_read_only(counts, name, t):
    c = counts.of(t)
    assert c.written == 0, f"{name} written"
    assert c.distinct_read == _nbytes(t), f"{name}: {c.distinct_read} of {_nbytes(t)} bytes read"
    return c


def _assert_written_once(counts, name, t):
    c = counts.of(t)
    assert c.distinct_written == _nbytes(t) and c.rewritten == 0, f"{name}: {c}"
    return c


@pytest.mark.parametrize("device", [SIMT])
@pytest.mark.parametrize("rows,cols,dtype,stream_fwd,stream_bwd", SHAPES)
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm", "add_layer_norm"])
def test_row_norm_forward_traffic(op, rows, cols, dtype, stream_fwd, stream_bwd, device):
    case = cases.make_case(op, cases.Variant("default"), (rows, cols), dtype, "cpu")
    i = case.inputs
    activations_in = {name: i[name].detach() for name in ("input", "residual") if name in i}
    params = {name: i[name].detach() for name in ("weight", "bias") if name in i}
    with simt.traffic() as counts:
        outputs, stats = _forward(op, i)

    elem = i["input"].element_size()
    for name, t in activations_in.items():
        c = _assert_read_only(counts, name, t)
        if stream_fwd and op != "add_layer_norm":
            # The second pass re-reads x (the fused op re-reads h, which it wrote, instead).
            assert c.reread == _nbytes(t), f"{name}: {c}"
        else:
            # Read once; LayerNorm's every thread of a row also reads the row's first element, the
            # shift of its two-pass variance (an L1 broadcast).
            assert c.reread <= (0 if op == "rms_norm" else rows * elem), f"{name}: {c}"
    for name, t in outputs.items():
        _assert_written_once(counts, name, t)
    for name, t in stats.items():
        _assert_written_once(counts, name, t)
    distinct_params = sum(_assert_read_only(counts, name, t).distinct_read for name, t in params.items())

    moved = sum(_nbytes(t) for t in activations_in.values()) + sum(_nbytes(t) for t in outputs.values())
    assert moved + distinct_params == cases.bytes_moved(case, "fwd")


@pytest.mark.parametrize("device", [SIMT])
@pytest.mark.parametrize("rows,cols,dtype,stream_fwd,stream_bwd", SHAPES)
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_row_norm_backward_traffic(op, rows, cols, dtype, stream_fwd, stream_bwd, device):
    case = cases.make_case(op, cases.Variant("default"), (rows, cols), dtype, "cpu")
    i = case.inputs
    x, w = i["input"].detach(), i["weight"].detach()
    outputs, stats = _forward(op, i)
    dy = torch.randn_like(outputs["y"])
    with simt.traffic() as counts:
        if op == "layer_norm":
            grads = torch.ops.norm_ext.layer_norm_backward(
                dy, x, [cols], stats["mean"], stats["rstd"], w, i["bias"].detach()
            )
        else:
            grads = torch.ops.norm_ext.rms_norm_backward(dy, x, [cols], stats["rstd"], w)

    for name, t in (("x", x), ("dy", dy)):
        c = _assert_read_only(counts, name, t)
        # Streaming: the row sums' pass, then the gradient's pass.
        assert c.reread == (_nbytes(t) if stream_bwd else 0), f"{name}: {c}"
    for name, t in stats.items():
        _assert_read_only(counts, name, t)
    _assert_written_once(counts, "dx", grads[0])
    param_grads = sum(_assert_written_once(counts, "dparam", g).distinct_written for g in grads[1:])
    weight_read = _assert_read_only(counts, "weight", w).distinct_read

    # The model counts 3 activations exactly, and the parameters read and their gradients written as
    # 2 x their bytes: an upper bound, since the backward does not read the bias.
    model = cases.bytes_moved(case, "bwd")
    activations = 3 * _nbytes(x)
    assert activations + param_grads + weight_read <= model
    assert model - activations == 2 * case.param_bytes
