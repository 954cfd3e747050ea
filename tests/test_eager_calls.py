"""The eager calls of norm_ext.functional (csrc/python_module.cpp). A plain call (exact tensors, no
torch-function mode) goes from Python straight to the op; any other form declines (NotImplemented) to
the general path through torch.ops, which handles tensor subclasses and __torch_function__ and words
the errors. Whichever path a call takes, its answer is the float64 reference's."""

import pytest
import torch
from conftest import DEVICES
from tolerances import BACKWARD, assert_close_to_reference
from torch.overrides import TorchFunctionMode

import norm_ext.functional as F
from norm_ext import _C
from norm_ext import reference as ref


class _Subclass(torch.Tensor):
    pass


class _RecordOps(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


def _row(device):
    x = torch.randn(4, 16, device=device)
    return x, torch.randn(16, device=device), torch.randn(16, device=device)


def _nchw(device):
    x = torch.randn(3, 6, 4, 5, device=device)
    return x, torch.randn(6, device=device), torch.randn(6, device=device)


def _expected_batch_norm(x, rm, rv, w, b, training):
    return ref.batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5)


# name -> (the eager call with plain arguments, the float64 reference of its output)
PLAIN = {
    "layer_norm": (
        lambda x, w, b: _C.layer_norm(x, (16,), w, b, 1e-5, False, False),
        lambda x, w, b: ref.layer_norm(x, (16,), w, b, 1e-5),
        _row,
    ),
    "rms_norm": (
        lambda x, w, b: _C.rms_norm(x, [16], w, None, False, False),
        lambda x, w, b: ref.rms_norm(x, (16,), w, torch.finfo(torch.float32).eps),
        _row,
    ),
    "group_norm": (
        lambda x, w, b: _C.group_norm(x, 3, w, b, 1e-5),
        lambda x, w, b: ref.group_norm(x, 3, w, b, 1e-5),
        _nchw,
    ),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(PLAIN))
def test_plain_call_returns_the_reference_output(name, device):
    call, reference, make = PLAIN[name]
    x, w, b = make(device)
    out = call(x, w, b)
    assert isinstance(out, torch.Tensor)
    assert_close_to_reference(out, reference(x, w, b), torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rms", [False, True], ids=["layer_norm", "rms_norm"])
@pytest.mark.parametrize("residual_dtype", [None, torch.float32], ids=["stream_bf16", "stream_fp32"])
def test_plain_fused_call_returns_output_and_stream(rms, residual_dtype, device):
    x, w, b = _row(device)
    x, residual = x.bfloat16(), torch.randn_like(x).bfloat16()
    h = ref.residual_stream(x, residual, residual_dtype)
    if rms:
        pair = _C.add_rms_norm(x, residual, (16,), w, None, residual_dtype, False, False)
        expected = ref.rms_norm(h, (16,), w, torch.finfo(h.dtype).eps)
    else:
        pair = _C.add_layer_norm(x, residual, (16,), w, b, 1e-5, residual_dtype, False, False)
        expected = ref.layer_norm(h, (16,), w, b, 1e-5)
    assert isinstance(pair, tuple) and len(pair) == 2
    out, stream = pair
    assert stream.dtype == h.dtype
    assert_close_to_reference(stream, h, h.dtype)
    assert_close_to_reference(out, expected, torch.bfloat16)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dim", [0, -1, None])
def test_plain_weight_norm_call(dim, device):
    v = torch.randn(6, 5, device=device)
    g = torch.rand({0: (6, 1), -1: (1, 5), None: ()}[dim], device=device) + 0.5
    w = _C.weight_norm(v, g, dim)
    assert isinstance(w, torch.Tensor)
    assert_close_to_reference(w, ref.weight_norm(v, g, dim), torch.float32)


def test_weight_norm_dim_out_of_range_declines_to_python_error():
    v, g = torch.randn(6, 5), torch.rand(6, 1)
    assert _C.weight_norm(v, g, 2) is NotImplemented
    with pytest.raises(ValueError, match="dim 2 is out of range"):
        F.weight_norm(v, g, 2)


def test_fused_call_with_a_non_dtype_declines():
    x, w, b = _row("cpu")
    assert _C.add_layer_norm(x, x, (16,), w, b, 1e-5, "float64", False, False) is NotImplemented
    assert _C.add_rms_norm(x.as_subclass(_Subclass), x, (16,), w, None, None, False, False) is NotImplemented


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_plain_batch_norm_updates_running_stats_in_place(training, device):
    x, w, b = _nchw(device)
    rm, rv = torch.randn(6, device=device), torch.rand(6, device=device) + 0.5
    expected, new_mean, new_var = _expected_batch_norm(x, rm, rv, w, b, training)
    versions = (rm._version, rv._version)
    out = _C.batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5)
    assert isinstance(out, torch.Tensor)
    assert_close_to_reference(out, expected, torch.float32)
    assert_close_to_reference(rm, new_mean, torch.float32)
    assert_close_to_reference(rv, new_var, torch.float32)
    # Autograd sees the writes (a tensor saved before them would fail its version check).
    assert (rm._version > versions[0]) == training and (rv._version > versions[1]) == training


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(lambda x, w, b: (x.as_subclass(_Subclass), (16,), w, b, 1e-5, False, False), id="subclass_input"),
        pytest.param(lambda x, w, b: (x, (16,), w.as_subclass(_Subclass), b, 1e-5, False, False), id="subclass_weight"),
        pytest.param(lambda x, w, b: (x.tolist(), (16,), w, b, 1e-5, False, False), id="list_input"),
        pytest.param(lambda x, w, b: (x, (16.0,), w, b, 1e-5, False, False), id="float_shape"),
        pytest.param(lambda x, w, b: (x, (16,), w, b, 1e-5, 0, False), id="int_flag"),
        pytest.param(lambda x, w, b: (x, (16,), w, b, "1e-5", False, False), id="str_eps"),
        pytest.param(lambda x, w, b: (x, (16,), w, b, 1e-5, False), id="too_few"),
    ],
)
def test_unusual_layer_norm_call_declines(args):
    x, w, b = _row("cpu")
    assert _C.layer_norm(*args(x, w, b)) is NotImplemented


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(lambda x, rm, rv: (x, rm, rv, None, None, True, torch.tensor(0.1), 1e-5), id="tensor_momentum"),
        pytest.param(lambda x, rm, rv: (x[:1, :, :1, :1], rm, rv, None, None, True, 0.1, 1e-5), id="one_value"),
        pytest.param(lambda x, rm, rv: (x, None, None, None, None, False, 0.1, 1e-5), id="eval_without_stats"),
        pytest.param(lambda x, rm, rv: (x, rm, rv, None, None, True, 1.5, 1e-5), id="momentum_range"),
        pytest.param(lambda x, rm, rv: (x, rm, rv, None, None, True, 0.1, -1.0), id="negative_eps"),
        pytest.param(lambda x, rm, rv: (x[0, 0, 0], rm, rv, None, None, True, 0.1, 1e-5), id="rank_1"),
    ],
)
def test_batch_norm_call_that_python_words_declines(args):
    x, _, _ = _nchw("cpu")
    rm, rv = torch.zeros(6), torch.ones(6)
    assert _C.batch_norm(*args(x, rm, rv)) is NotImplemented
    assert torch.equal(rm, torch.zeros(6)) and torch.equal(rv, torch.ones(6))


def test_group_norm_bool_groups_declines():
    x, w, b = _nchw("cpu")
    assert _C.group_norm(x, True, w, b, 1e-5) is NotImplemented


def test_torch_function_mode_takes_the_general_path():
    x, w, b = _row("cpu")
    with _RecordOps() as mode:
        assert _C.layer_norm(x, (16,), w, b, 1e-5, False, False) is NotImplemented
        out = F.layer_norm(x, (16,), w, b)
    assert any("norm_ext.layer_norm" in f for f in mode.seen), mode.seen
    assert_close_to_reference(out, ref.layer_norm(x, (16,), w, b, 1e-5), torch.float32)


@pytest.mark.parametrize("fn", ["layer_norm", "rms_norm", "group_norm", "batch_norm"])
def test_subclass_input_gives_the_reference_through_the_general_path(fn):
    x, w, b = _row("cpu") if fn in ("layer_norm", "rms_norm") else _nchw("cpu")
    sub = x.as_subclass(_Subclass)
    if fn == "layer_norm":
        out, expected = F.layer_norm(sub, (16,), w, b), ref.layer_norm(x, (16,), w, b, 1e-5)
    elif fn == "rms_norm":
        out, expected = F.rms_norm(sub, (16,), w, 1e-6), ref.rms_norm(x, (16,), w, 1e-6)
    elif fn == "group_norm":
        out, expected = F.group_norm(sub, 3, w, b), ref.group_norm(x, 3, w, b, 1e-5)
    else:
        rm, rv = torch.zeros(6), torch.ones(6)
        out = F.batch_norm(sub, rm, rv, w, b, training=True)
        expected, new_mean, _ = _expected_batch_norm(x, torch.zeros(6), torch.ones(6), w, b, True)
        assert_close_to_reference(rm, new_mean, torch.float32)
    assert_close_to_reference(out, expected, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_plain_calls_differentiate_as_the_general_path(device):
    # The eager call reaches the same op, so autograd's C++ formula runs either way: the gradients
    # of a plain call match the float64 reference's.
    x = torch.randn(4, 16, device=device, requires_grad=True)
    w = torch.randn(16, device=device, requires_grad=True)
    b = torch.randn(16, device=device, requires_grad=True)
    dy = torch.randn(4, 16, device=device)
    F.layer_norm(x, (16,), w, b).backward(dy)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    ref.layer_norm(x64, (16,), w64, b64, 1e-5).backward(dy.double())
    for t, t64 in ((x, x64), (w, w64), (b, b64)):
        assert_close_to_reference(t.grad, t64.grad, torch.float32, BACKWARD)


@pytest.mark.parametrize("device", DEVICES)
def test_eval_batch_norm_differentiates_input_and_parameters(device):
    # Eval mode normalizes by the running statistics, constants to autograd (as in torch).
    x = torch.randn(3, 6, 4, 5, device=device, requires_grad=True)
    w = torch.randn(6, device=device, requires_grad=True)
    b = torch.randn(6, device=device, requires_grad=True)
    rm, rv = torch.randn(6, device=device), torch.rand(6, device=device) + 0.5
    dy = torch.randn_like(x)
    F.batch_norm(x, rm, rv, w, b, training=False).backward(dy)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    ref.batch_norm(x64, rm, rv, w64, b64, False, 0.1, 1e-5)[0].backward(dy.double())
    for t, t64 in ((x, x64), (w, w64), (b, b64)):
        assert_close_to_reference(t.grad, t64.grad, torch.float32, BACKWARD)
