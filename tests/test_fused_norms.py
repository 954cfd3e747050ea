"""Fused residual + norm (add_layer_norm / add_rms_norm), zero-centred weights and memory-efficient
backward: parity with an unfused float64 reference, opcheck and torch.compile."""

import pytest
import torch
from conftest import DEVICES, GPU_DEVICES
from tolerances import BACKWARD, FORWARD, MEMORY_EFFICIENT_BACKWARD, assert_close_to_reference
from torch.utils._python_dispatch import TorchDispatchMode

import norm_ext
from norm_ext import reference

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# (input shape, normalized_shape)
SHAPES = [((5, 7), (7,)), ((2, 3, 257), (257,)), ((2, 3, 4, 6), (4, 6))]
SHAPE_IDS = ["n7", "n257", "multidim"]

# How the residual stream is stored: the residual's dtype; fp32 by residual_dtype while the residual
# has the input's dtype; fp32 because the residual tensor itself is fp32.
STREAMS = ["same", "residual_dtype_fp32", "fp32_residual"]


def _leaf(t):
    return None if t is None else t.detach().clone().requires_grad_(True)


def _leaf64(t):
    return None if t is None else t.detach().to(torch.float64).requires_grad_(True)


def _stream_setup(stream, dtype):
    """(residual tensor dtype, residual_dtype argument, dtype of h) for a stream kind."""
    if stream == "same":
        return dtype, None, dtype
    if stream == "residual_dtype_fp32":
        return dtype, torch.float32, torch.float32
    return torch.float32, None, torch.float32


def _check_fused(
    kind,
    shape,
    normalized_shape,
    dtype,
    device,
    stream="same",
    zero_centered=False,
    memory_efficient=False,
    with_weight=True,
    with_bias=True,
    grad_through_stream=True,
    eps=1e-5,
):
    residual_tensor_dtype, residual_dtype, h_dtype = _stream_setup(stream, dtype)
    x = _leaf(torch.randn(shape, dtype=dtype, device=device) * 1.5 + 0.25)
    r = _leaf(torch.randn(shape, dtype=residual_tensor_dtype, device=device) * 2)
    if memory_efficient:
        # Memory-efficient mode recovers x_hat = (y - b) / w, so a weight of exactly 0 gives non-finite
        # gradients (documented); bf16 randn * 0.5 + 1 is exactly 0 for about one element in 1200.
        w_init = torch.rand(normalized_shape, dtype=dtype, device=device) + 0.5
    else:
        w_init = torch.randn(normalized_shape, dtype=dtype, device=device) * 0.5 + 1.0
    w = _leaf(w_init) if with_weight else None
    b = _leaf(torch.randn(normalized_shape, dtype=dtype, device=device)) if with_bias and kind == "layer" else None
    extra = dict(zero_centered_weight=zero_centered, memory_efficient=memory_efficient)
    if kind == "layer":
        out, h = norm_ext.add_layer_norm(x, r, normalized_shape, w, b, eps, residual_dtype, **extra)
    else:
        out, h = norm_ext.add_rms_norm(x, r, normalized_shape, w, eps, residual_dtype, **extra)
    assert out.dtype == dtype and out.shape == x.shape
    assert h.dtype == h_dtype and h.shape == x.shape

    x64, r64, w64, b64 = _leaf64(x), _leaf64(r), _leaf64(w), _leaf64(b)
    h_ref = reference.residual_stream(x64, r64, residual_dtype)
    if kind == "layer":
        out_ref = reference.layer_norm(h_ref, normalized_shape, w64, b64, eps, zero_centered_weight=zero_centered)
    else:
        out_ref = reference.rms_norm(h_ref, normalized_shape, w64, eps, zero_centered_weight=zero_centered)
    assert_close_to_reference(h, h_ref, dtype, FORWARD, "residual stream h")
    assert_close_to_reference(out, out_ref, dtype, FORWARD, "output")

    dout = torch.randn_like(out)
    dh = torch.randn_like(h) if grad_through_stream else None
    leaves = [t for t in (x, r, w, b) if t is not None]
    leaves64 = [t for t in (x64, r64, w64, b64) if t is not None]
    outputs, outputs_ref = [out], [out_ref]
    grad_outputs, grad_outputs_ref = [dout], [dout.double()]
    if dh is not None:
        outputs.append(h)
        outputs_ref.append(h_ref)
        grad_outputs.append(dh)
        grad_outputs_ref.append(dh.to(h_ref.dtype))
    grads = torch.autograd.grad(outputs, leaves, grad_outputs)
    grads_ref = torch.autograd.grad(outputs_ref, leaves64, grad_outputs_ref)
    table = MEMORY_EFFICIENT_BACKWARD if memory_efficient else BACKWARD
    for name, g, g_ref, leaf in zip(("d_input", "d_residual", "d_weight", "d_bias"), grads, grads_ref, leaves):
        assert g.dtype == leaf.dtype, name
        assert_close_to_reference(g, g_ref, dtype, table, name)


# A float64 input keeps a float64 residual stream: only "same" applies to it.
DTYPE_STREAMS = [
    pytest.param(dtype, stream, id=f"{stream}-{dtype}")
    for stream in STREAMS
    for dtype in DTYPES
    if dtype != torch.float64 or stream == "same"
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,normalized_shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype,stream", DTYPE_STREAMS)
@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_add_norm_parity(kind, dtype, stream, shape, normalized_shape, device):
    _check_fused(kind, shape, normalized_shape, dtype, device, stream=stream)


@pytest.mark.parametrize("device", GPU_DEVICES)
@pytest.mark.parametrize("memory_efficient", [False, True], ids=["saved_h", "saved_output"])
@pytest.mark.parametrize("stream", ["same", "fp32_residual"])
@pytest.mark.parametrize("cols", [65536, pytest.param(131072, marks=pytest.mark.size_sweep)])
@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_add_norm_long_rows(kind, cols, stream, memory_efficient, device):
    # The cluster path of both directions with each residual-stream dtype and saved tensor (the
    # checked SIMT build runs 65536 only: these take 3-5 s each on the plain build).
    _check_fused(kind, (48, cols), (cols,), torch.bfloat16, device, stream=stream, memory_efficient=memory_efficient)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_add_norm_gradient_through_output_only(kind, device):
    # The last block of a pre-norm stack uses only norm(h); h itself receives no gradient.
    _check_fused(kind, (6, 40), (40,), torch.float32, device, grad_through_stream=False)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["layer", "rms"])
@pytest.mark.parametrize("with_weight,with_bias", [(False, False), (True, False), (False, True)])
def test_add_norm_optional_affine(kind, with_weight, with_bias, device):
    _check_fused(kind, (9, 65), (65,), torch.float32, device, with_weight=with_weight, with_bias=with_bias)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("memory_efficient", [False, True], ids=["saves_input", "memory_efficient"])
@pytest.mark.parametrize("zero_centered", [False, True], ids=["plain_weight", "zero_centered"])
@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_add_norm_options(kind, zero_centered, memory_efficient, dtype, device):
    stream = "same" if dtype == torch.float64 else "residual_dtype_fp32"
    _check_fused(
        kind,
        (4, 3, 96),
        (96,),
        dtype,
        device,
        stream=stream,
        zero_centered=zero_centered,
        memory_efficient=memory_efficient,
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("memory_efficient", [False, True], ids=["saves_input", "memory_efficient"])
@pytest.mark.parametrize("zero_centered", [False, True], ids=["plain_weight", "zero_centered"])
@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_plain_norm_options(kind, zero_centered, memory_efficient, dtype, device):
    x = _leaf(torch.randn(4, 3, 96, dtype=dtype, device=device) + 0.5)
    w = _leaf(torch.randn(96, dtype=dtype, device=device) * 0.5 + (0.0 if zero_centered else 1.0))
    b = _leaf(torch.randn(96, dtype=dtype, device=device)) if kind == "layer" else None
    extra = dict(zero_centered_weight=zero_centered, memory_efficient=memory_efficient)
    x64, w64, b64 = _leaf64(x), _leaf64(w), _leaf64(b)
    if kind == "layer":
        y = norm_ext.layer_norm(x, (96,), w, b, 1e-5, **extra)
        y_ref = reference.layer_norm(x64, (96,), w64, b64, 1e-5, zero_centered_weight=zero_centered)
    else:
        y = norm_ext.rms_norm(x, (96,), w, 1e-5, **extra)
        y_ref = reference.rms_norm(x64, (96,), w64, 1e-5, zero_centered_weight=zero_centered)
    assert_close_to_reference(y, y_ref, dtype, FORWARD, "output")
    dy = torch.randn_like(y)
    leaves = [t for t in (x, w, b) if t is not None]
    grads = torch.autograd.grad(y, leaves, dy)
    grads_ref = torch.autograd.grad(y_ref, [t for t in (x64, w64, b64) if t is not None], dy.double())
    table = MEMORY_EFFICIENT_BACKWARD if memory_efficient else BACKWARD
    for name, g, g_ref in zip(("d_input", "d_weight", "d_bias"), grads, grads_ref):
        assert_close_to_reference(g, g_ref, dtype, table, name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_memory_efficient_matches_default_gradients(kind, device):
    x = torch.randn(8, 128, device=device)
    r = torch.randn(8, 128, device=device)
    w = torch.rand(128, device=device) + 0.5
    b = torch.randn(128, device=device) if kind == "layer" else None
    fn = norm_ext.add_layer_norm if kind == "layer" else norm_ext.add_rms_norm
    results = []
    for memory_efficient in (False, True):
        leaves = [_leaf(t) for t in (x, r, w, b) if t is not None]
        args = leaves[:3] + ([leaves[3]] if kind == "layer" else [])
        if kind == "layer":
            out, h = fn(args[0], args[1], (128,), args[2], args[3], memory_efficient=memory_efficient)
        else:
            out, h = fn(args[0], args[1], (128,), args[2], 1e-6, memory_efficient=memory_efficient)
        (out.square().sum() + h.sum()).backward()
        results.append([t.grad for t in leaves])
    for g_default, g_efficient in zip(*results):
        torch.testing.assert_close(g_efficient, g_default, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("memory_efficient", [False, True], ids=["saves_input", "memory_efficient"])
@pytest.mark.parametrize("zero_centered", [False, True], ids=["plain_weight", "zero_centered"])
@pytest.mark.parametrize("module_cls", ["LayerNorm", "RMSNorm"])
def test_module_options(module_cls, zero_centered, memory_efficient, dtype, device):
    m = getattr(norm_ext.nn, module_cls)(
        64, eps=1e-5, zero_centered_weight=zero_centered, memory_efficient=memory_efficient, device=device, dtype=dtype
    )
    if zero_centered:
        assert torch.count_nonzero(m.weight) == 0, "a zero-centred weight starts at 0 (scale 1)"
    with torch.no_grad():
        m.weight.add_(torch.randn_like(m.weight) * 0.3)
    x = _leaf(torch.randn(5, 64, dtype=dtype, device=device))
    y = m(x)
    x64 = _leaf64(x)
    w64 = _leaf64(m.weight)
    if module_cls == "LayerNorm":
        b64 = _leaf64(m.bias)
        y_ref = reference.layer_norm(x64, (64,), w64, b64, 1e-5, zero_centered_weight=zero_centered)
        leaves, leaves64 = [x, m.weight, m.bias], [x64, w64, b64]
    else:
        y_ref = reference.rms_norm(x64, (64,), w64, 1e-5, zero_centered_weight=zero_centered)
        leaves, leaves64 = [x, m.weight], [x64, w64]
    assert_close_to_reference(y, y_ref, dtype, FORWARD, "output")
    dy = torch.randn_like(y)
    table = MEMORY_EFFICIENT_BACKWARD if memory_efficient else BACKWARD
    grads = torch.autograd.grad(y, leaves, dy)
    for name, g, g_ref in zip(
        ("d_input", "d_weight", "d_bias"), grads, torch.autograd.grad(y_ref, leaves64, dy.double())
    ):
        assert_close_to_reference(g, g_ref, dtype, table, name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("memory_efficient", [False, True], ids=["saves_input", "memory_efficient"])
@pytest.mark.parametrize("module_cls", ["AddLayerNorm", "AddRMSNorm"])
def test_add_norm_modules(module_cls, memory_efficient, device):
    m = getattr(norm_ext.nn, module_cls)(48, eps=1e-5, memory_efficient=memory_efficient, device=device)
    with torch.no_grad():
        m.weight.uniform_(0.5, 1.5)
    x = _leaf(torch.randn(3, 4, 48, device=device, dtype=torch.bfloat16))
    r = _leaf(torch.randn(3, 4, 48, device=device))
    out, h = m(x, r)
    assert out.dtype == torch.bfloat16 and h.dtype == torch.float32
    x64, r64, w64 = _leaf64(x), _leaf64(r), _leaf64(m.weight)
    h_ref = reference.residual_stream(x64, r64)
    if module_cls == "AddLayerNorm":
        b64 = _leaf64(m.bias)
        out_ref = reference.layer_norm(h_ref, (48,), w64, b64, 1e-5)
        leaves, leaves64 = [x, r, m.weight, m.bias], [x64, r64, w64, b64]
    else:
        out_ref = reference.rms_norm(h_ref, (48,), w64, 1e-5)
        leaves, leaves64 = [x, r, m.weight], [x64, r64, w64]
    assert_close_to_reference(out, out_ref, torch.bfloat16, FORWARD, "output")
    assert_close_to_reference(h, h_ref, torch.float32, FORWARD, "residual stream h")
    dout, dh = torch.randn_like(out), torch.randn_like(h)
    grads = torch.autograd.grad([out, h], leaves, [dout, dh])
    grads_ref = torch.autograd.grad([out_ref, h_ref], leaves64, [dout.double(), dh])
    table = MEMORY_EFFICIENT_BACKWARD if memory_efficient else BACKWARD
    for name, g, g_ref in zip(("d_input", "d_residual", "d_weight", "d_bias"), grads, grads_ref):
        assert_close_to_reference(g, g_ref, torch.bfloat16, table, name)
    # Without a residual the stream starts at the input (the first block of a pre-norm stack).
    first_out, first_h = m(x.detach())
    assert first_h is not None and torch.equal(first_h, x.detach())
    if module_cls == "AddLayerNorm":
        first_ref = reference.layer_norm(x, (48,), m.weight, m.bias, 1e-5)
    else:
        first_ref = reference.rms_norm(x, (48,), m.weight, 1e-5)
    assert_close_to_reference(first_out, first_ref, torch.bfloat16, FORWARD, "output without a residual")


@pytest.mark.parametrize("module_cls", ["AddLayerNorm", "AddRMSNorm"])
def test_add_norm_modules_share_state_dict_with_torch(module_cls):
    theirs = torch.nn.LayerNorm(16) if module_cls == "AddLayerNorm" else torch.nn.RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        theirs.weight.uniform_()
    ours = getattr(norm_ext.nn, module_cls)(16, eps=theirs.eps)
    ours.load_state_dict(theirs.state_dict())
    x, r = torch.randn(3, 16), torch.randn(3, 16)
    out, h = ours(x, r)
    torch.testing.assert_close(h, x + r)
    torch.testing.assert_close(out, theirs(x + r), rtol=1e-5, atol=1e-5)


def _opcheck_samples(device):
    ops = torch.ops.norm_ext

    def t(*shape, dtype=torch.float32):
        return torch.randn(*shape, device=device, dtype=dtype, requires_grad=True)

    x, r, w, b = t(3, 5, 16), t(3, 5, 16), t(16), t(16)
    xb, wf = t(3, 5, 16, dtype=torch.bfloat16), t(16)
    yield ops.add_layer_norm.default, (x, r, [16], w, b, 1e-5)
    yield ops.add_layer_norm.default, (x, r, [5, 16], None, None, 1e-5, None, False, True)
    yield ops.add_layer_norm.default, (xb, t(3, 5, 16, dtype=torch.bfloat16), [16], wf, t(16), 1e-5, torch.float32)
    yield ops.add_layer_norm.default, (x, r, [16], w, b, 1e-5, None, True, True)
    yield ops.add_rms_norm.default, (x, r, [16], w, 1e-6)
    yield ops.add_rms_norm.default, (xb, t(3, 5, 16), [16], wf, 1e-6, None, True, False)
    yield (
        ops.add_rms_norm.default,
        (xb, t(3, 5, 16, dtype=torch.bfloat16), [16], None, 1e-6, torch.float32, False, True),
    )


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_fused_ops(device):
    for op, args in _opcheck_samples(device):
        torch.library.opcheck(op, args)


class _BackwardOpArgs(TorchDispatchMode):
    """Records the arguments of the row-norm backward ops that run under it."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.name().endswith("_backward"):
            self.calls.append({**dict(zip((a.name for a in func._schema.arguments), args)), **kwargs})
        return func(*args, **kwargs)


@pytest.mark.parametrize("op", ["add_layer_norm", "add_rms_norm"])
def test_unused_residual_stream_gets_no_zero_gradient(op):
    # Differentiating y alone must not hand the backward op a zero-filled gradient of h's full size to
    # read and add (autograd materializes one unless told not to); with h used, its gradient is fused.
    x, r = torch.randn(6, 32, requires_grad=True), torch.randn(6, 32, requires_grad=True)
    w = torch.randn(32, requires_grad=True)
    call = getattr(norm_ext, op)
    for use_h in (False, True):
        y, h = call(x, r, (32,), w)
        with _BackwardOpArgs() as mode:
            (y.sum() + (h.square().sum() if use_h else 0)).backward()
        (backward_call,) = mode.calls
        assert (backward_call.get("grad_residual") is not None) == use_h
        x64, r64, w64 = (t.detach().double().requires_grad_(True) for t in (x, r, w))
        h64 = reference.residual_stream(x64, r64)
        norm64 = reference.layer_norm if op == "add_layer_norm" else reference.rms_norm
        y64 = norm64(h64, (32,), w64)
        grads64 = torch.autograd.grad(y64.sum() + (h64.square().sum() if use_h else 0), (x64, w64))
        assert_close_to_reference(x.grad, grads64[0], torch.float32, BACKWARD, "dx")
        assert_close_to_reference(w.grad, grads64[1], torch.float32, BACKWARD, "dweight")
        x.grad = r.grad = w.grad = None


def test_torch_compile_fullgraph_pre_norm_step():
    torch._dynamo.reset()
    w_ln, b_ln, w_rms = (torch.randn(32, requires_grad=True) for _ in range(3))

    def two_steps(x, residual, memory_efficient):
        y, h = norm_ext.add_layer_norm(
            x, residual, (32,), w_ln, b_ln, residual_dtype=torch.float32, memory_efficient=memory_efficient
        )
        z, h = norm_ext.add_rms_norm(y * 2, h, (32,), w_rms, 1e-6, zero_centered_weight=True)
        return (z.float().square().sum() + h.sum()) / 100

    compiled = torch.compile(two_steps, fullgraph=True)
    x = torch.randn(4, 6, 32, dtype=torch.bfloat16, requires_grad=True)
    r = torch.randn(4, 6, 32, requires_grad=True)
    for memory_efficient in (False, True):
        leaves = [x, r, w_ln, b_ln, w_rms]
        eager = torch.autograd.grad(two_steps(x, r, memory_efficient), leaves)
        loss = compiled(x, r, memory_efficient)
        torch.testing.assert_close(loss, two_steps(x, r, memory_efficient))
        for g, g_eager in zip(torch.autograd.grad(loss, leaves), eager):
            torch.testing.assert_close(g, g_eager)


@pytest.mark.parametrize("module_cls", ["AddLayerNorm", "AddRMSNorm"])
def test_torch_compile_fullgraph_add_norm_module(module_cls):
    torch._dynamo.reset()
    m = getattr(norm_ext.nn, module_cls)(32, eps=1e-6)
    theirs = torch.nn.LayerNorm(32, eps=1e-6) if module_cls == "AddLayerNorm" else torch.nn.RMSNorm(32, eps=1e-6)
    with torch.no_grad():
        m.weight.uniform_(0.5, 1.5)
    theirs.load_state_dict(m.state_dict())
    compiled = torch.compile(m, fullgraph=True)
    x = torch.randn(4, 6, 32, requires_grad=True)
    r = torch.randn(4, 6, 32, requires_grad=True)
    out, h = compiled(x, r)
    (out.square().sum() + h.sum()).backward()
    x_ref, r_ref = x.detach().requires_grad_(True), r.detach().requires_grad_(True)
    h_ref = x_ref + r_ref
    out_ref = theirs(h_ref)
    (out_ref.square().sum() + h_ref.sum()).backward()
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, h_ref)
    for g, g_ref in ((x.grad, x_ref.grad), (r.grad, r_ref.grad), (m.weight.grad, theirs.weight.grad)):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-4)


def test_rms_default_eps_for_fp32_stream_follows_the_stream():
    # Small activations make the difference visible: mean(h**2) ~ 2e-4 is swamped by eps = 7.8e-3.
    x = (torch.randn(4, 64) * 1e-2).to(torch.bfloat16)
    r = torch.randn(4, 64) * 1e-2
    out, h = norm_ext.add_rms_norm(x, r, (64,))
    expected = reference.rms_norm(reference.residual_stream(x, r), (64,), eps=None)
    assert_close_to_reference(out, expected, torch.bfloat16, FORWARD, "output")


@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_stream_is_rounded_once(kind):
    # An fp32 residual into an fp16 stream: h = x + residual must be rounded once, after the add.
    x = torch.randn(256, 64, dtype=torch.float16)
    r = torch.randn(256, 64) * 100
    fn = norm_ext.add_layer_norm if kind == "layer" else norm_ext.add_rms_norm
    _, h = fn(x, r, (64,), residual_dtype=torch.float16)
    assert torch.equal(h, reference.residual_stream(x, r, torch.float16))
