"""LayerNorm and RMSNorm: parity with float64 references, autograd, opcheck, compile and bad input."""

import os
import subprocess
import sys

import pytest
import torch
from conftest import DEVICES, GPU_DEVICES, SIMT, needs_cuda
from tolerances import BACKWARD, FORWARD, assert_close_to_reference, assert_grads_close_to_reference, leaf

import norm_ext
from norm_ext import reference, simt

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# (input shape, normalized_shape): row lengths 1, 7, 1023, 4097, 300000 and a 2-D normalized shape.
SHAPES = [
    ((3, 1), (1,)),
    ((5, 7), (7,)),
    ((2, 3, 1023), (1023,)),
    ((6, 4097), (4097,)),
    ((2, 300000), (300000,)),
    ((2, 3, 5, 6), (5, 6)),
]
SHAPE_IDS = ["n1", "n7", "n1023", "n4097", "n300000", "multidim"]


def _params(normalized_shape, dtype, device, with_weight=True, with_bias=True, param_dtype=None):
    pd = param_dtype or dtype
    w = torch.randn(normalized_shape, dtype=pd, device=device) if with_weight else None
    b = torch.randn(normalized_shape, dtype=pd, device=device) if with_bias else None
    return w, b


def _check_forward_backward(kind, x, normalized_shape, w, b, eps, dtype, **extra):
    x, w, b = leaf(x), leaf(w), leaf(b)
    if kind == "layer":
        y = norm_ext.layer_norm(x, normalized_shape, w, b, eps, **extra)
    else:
        y = norm_ext.rms_norm(x, normalized_shape, w, eps, **extra)
        b = None
    assert y.dtype == x.dtype and y.shape == x.shape
    zc = extra.get("zero_centered_weight", False)
    x64, w64, b64 = (leaf(t, torch.float64) for t in (x, w, b))
    if kind == "layer":
        y64 = reference.layer_norm(x64, normalized_shape, w64, b64, eps, zero_centered_weight=zc)
    else:
        y64 = reference.rms_norm(x64, normalized_shape, w64, eps, zero_centered_weight=zc)
    assert_close_to_reference(y, y64, dtype, FORWARD, "output")
    assert_grads_close_to_reference(y, y64, (x, w, b), (x64, w64, b64), dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,normalized_shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_parity(kind, shape, normalized_shape, dtype, device):
    x = torch.randn(shape, dtype=dtype, device=device) * 2 + 0.5
    w, b = _params(normalized_shape, dtype, device)
    _check_forward_backward(kind, x, normalized_shape, w, b, 1e-5, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["layer", "rms"])
@pytest.mark.parametrize("with_weight,with_bias", [(False, False), (True, False), (False, True)])
def test_optional_affine(kind, with_weight, with_bias, device):
    x = torch.randn(9, 65, device=device)
    w, b = _params((65,), torch.float32, device, with_weight, with_bias)
    _check_forward_backward(kind, x, (65,), w, b, 1e-5, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_fp32_params_with_low_precision_input(kind, dtype, device):
    x = torch.randn(33, 768, dtype=dtype, device=device)
    w, b = _params((768,), dtype, device, param_dtype=torch.float32)
    _check_forward_backward(kind, x, (768,), w, b, 1e-5, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["layer", "rms"])
@pytest.mark.parametrize("layout", ["transposed", "offset", "strided"])
def test_non_contiguous_and_misaligned(kind, layout, device):
    base = torch.randn(40, 130, device=device)
    x = {"transposed": base.t()[:, :40], "offset": base[:, 1:], "strided": base[::2, ::2]}[layout]
    assert not x.is_contiguous() or x.storage_offset() % 4
    n = x.shape[-1]
    w, b = _params((n,), torch.float32, device)
    _check_forward_backward(kind, x, (n,), w, b, 1e-5, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_storage_offset_breaks_vector_alignment(kind, device):
    # A contiguous tensor whose data pointer is 4 bytes past a 16-byte boundary.
    x = torch.randn(8 * 256 + 1, device=device)[1:].view(8, 256)
    assert x.is_contiguous() and x.data_ptr() % 16 != 0
    w, b = _params((256,), torch.float32, device)
    _check_forward_backward(kind, x, (256,), w, b, 1e-5, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_zero_centered_weight(kind, device):
    x = torch.randn(7, 96, device=device)
    w, b = _params((96,), torch.float32, device)
    _check_forward_backward(kind, x, (96,), w * 0.1, b, 1e-6, torch.float32, zero_centered_weight=True)


@pytest.mark.parametrize("device", DEVICES)
def test_large_offset_rows_keep_their_variance(device):
    # E[x^2] - E[x]^2 loses everything here in fp32: mean 1e4, std 1e-2. Even an fp32 mean rounded
    # to the offset's ulp (1e-3) would shift the output by 0.05; torch's CPU kernel is off by 0.1.
    x = (1e4 + 1e-2 * torch.randn(16, 4096, dtype=torch.float64, device=device)).float()
    y = norm_ext.layer_norm(x, (4096,), eps=1e-9)
    y64 = reference.layer_norm(x, (4096,), eps=1e-9)
    assert float((y.double() - y64).abs().max()) < 1e-3
    assert abs(float(y.double().std(dim=-1).mean()) - 1.0) < 1e-2


# Rows past one block's registers. On sm_90 these split over thread-block clusters of 4-16 blocks
# (plans/row_norm.h; 40000 bf16 takes 4 blocks forward and 8 backward, 65536 fp32 8 and 16), and past
# what 16 blocks hold (backward: 262144 bf16, 131072 fp32 and up) they stream. With more rows than
# clusters fit at once, each cluster takes several rows and reuses its exchange buffers. float64
# rows past 65536 only stream, which n300000 covers. Each case takes 5-20 s on the plain SIMT build
# and three to six times that under the checkers, so the checked build runs n40000 in bfloat16 (the
# most elements per vector, clusters looping over rows) and leaves the others (size_sweep) to the
# plain build; test_every_row_path_is_taken runs each of their paths in float32 on both builds.
LONG_ROWS = [
    pytest.param(
        rows,
        cols,
        dtype,
        id=f"n{cols}-{str(dtype).split('.')[-1]}",
        marks=[] if (cols, dtype) == (40000, torch.bfloat16) else [pytest.mark.size_sweep],
    )
    for rows, cols in [(300, 40000), (200, 65536), (64, 131072), (24, 262144)]
    for dtype in (torch.float32, torch.float64, torch.bfloat16)
    if not (dtype == torch.float64 and cols > 65536)
]


@pytest.mark.parametrize("device", GPU_DEVICES)
@pytest.mark.parametrize("rows,cols,dtype", LONG_ROWS)
@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_long_rows(kind, rows, cols, dtype, device):
    x = torch.randn(rows, cols, dtype=dtype, device=device) * 2 + 0.5
    w, b = _params((cols,), dtype, device)
    _check_forward_backward(kind, x, (cols,), w, b, 1e-5, dtype)


# Every path of the row-norm plans (plans/row_norm.h) at the H200's properties, each with an fp32
# shape that takes it, checked from the SIMT launch log so that the shapes of the tests above keep
# reaching the paths they are meant for; each also checked against float64. (fwd, bwd) per shape:
# the kernel, whether a block holds several rows (warp mode), and the cluster size.
ROW_PATHS = [
    pytest.param(64, 128, ("reg", True, 1), ("reg", True, 1), id="warp"),
    pytest.param(4, 1000, ("reg", False, 1), ("reg", False, 1), id="block"),
    pytest.param(2, 4100, ("reg", False, 1), ("cluster", False, 4), id="bwd-cluster4"),
    pytest.param(2, 20000, ("cluster", False, 4), ("cluster", False, 8), id="cluster4-8"),
    pytest.param(2, 40000, ("cluster", False, 8), ("cluster", False, 16), id="cluster8-16"),
    pytest.param(2, 131072, ("cluster", False, 8), ("stream", False, 1), id="cluster8-bwd-stream"),
    pytest.param(2, 262144, ("cluster", False, 16), ("stream", False, 1), id="cluster16"),
    pytest.param(3, 4097, ("stream", False, 1), ("stream", False, 1), id="misaligned-stream"),
    pytest.param(2, 300000, ("stream", False, 1), ("stream", False, 1), id="long-stream"),
]


@pytest.mark.parametrize("rows,cols,fwd_path,bwd_path", ROW_PATHS)
@pytest.mark.parametrize("device", [SIMT])
def test_every_row_path_is_taken(rows, cols, fwd_path, bwd_path, device):
    dtype = torch.float32

    def path(launches, direction):
        # The streaming backward's first pass (row_sums) precedes its main kernel.
        prefix = f"row_norm_{direction}_"
        main = [x for x in launches if x.name.startswith(prefix) and x.name != "row_norm_bwd_row_sums"]
        assert len(main) == 1, launches
        launch = main[0]
        kernel = launch.name[len(prefix) :]
        return kernel, launch.grid[0] < rows, launch.cluster

    x = torch.randn(rows, cols) * 2 + 0.5
    w, b = _params((cols,), dtype, device)
    with simt.launch_log() as forward_launches:
        y, mean, rstd = torch.ops.norm_ext.layer_norm(x, [cols], w, b, 1e-5)
    dy = torch.randn_like(y)
    with simt.launch_log() as backward_launches:
        dx, dw, db = torch.ops.norm_ext.layer_norm_backward(dy, x, [cols], mean, rstd, w, b)
    assert path(forward_launches, "fwd") == fwd_path
    assert path(backward_launches, "bwd") == bwd_path

    x64, w64, b64 = (t.double().requires_grad_() for t in (x, w, b))
    y64 = reference.layer_norm(x64, (cols,), w64, b64, 1e-5)
    assert_close_to_reference(y, y64, dtype, FORWARD, "output")
    for name, g, g64 in zip(
        ("dx", "dweight", "dbias"), (dx, dw, db), torch.autograd.grad(y64, (x64, w64, b64), dy.double())
    ):
        assert_close_to_reference(g, g64, dtype, BACKWARD, name)


@pytest.mark.parametrize("device", GPU_DEVICES)
@pytest.mark.parametrize("cols", [65536, 262144])
def test_long_rows_with_large_offset_keep_their_variance(cols, device):
    # Each block of a cluster shifts by the row's first element and merges its slice's (count,
    # mean, m2) by Chan's formula; any E[x^2] - E[x]^2 step would lose this row entirely.
    x = (1e4 + 1e-2 * torch.randn(8, cols, dtype=torch.float64, device=device)).float()
    y = norm_ext.layer_norm(x, (cols,), eps=1e-9)
    y64 = reference.layer_norm(x, (cols,), eps=1e-9)
    assert float((y.double() - y64).abs().max()) < 1e-3


@pytest.mark.parametrize("rows,cols", [(8, 768), (64, 1024), (3, 40000)], ids=["one-block", "two-blocks", "few-rows"])
@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_cpu_backward_blocks(kind, rows, cols):
    # The CPU backward sums dγ/dβ straight into the outputs below a grain of 32K elements, and over
    # partial rows of two threads' blocks above it (csrc/cpu/row_norm_kernel_impl.h); both at two threads.
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = torch.randn(rows, cols) * 2 + 0.5
        w, b = _params((cols,), torch.float32, "cpu")
        _check_forward_backward(kind, x, (cols,), w, b, 1e-5, torch.float32)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_bf16_subnormal_outputs_keep_parity(kind, device):
    # Weights of 1e-39 make every output an fp32 subnormal, which bf16 keeps (same exponent range).
    # The AVX-512 narrowing instruction alone would flush them to zero; the kernels must round them
    # like any other value: within one bf16 subnormal step (2^-133) of the float64 result.
    x = torch.randn(8, 4 * 256 + 5, device=device).bfloat16()
    w = torch.full((x.shape[1],), 1e-39, device=device)
    shape = (x.shape[1],)
    y = norm_ext.layer_norm(x, shape, w) if kind == "layer" else norm_ext.rms_norm(x, shape, w, 1e-6)
    y64 = reference.layer_norm(x, shape, w) if kind == "layer" else reference.rms_norm(x, shape, w, 1e-6)
    assert float((y.double() - y64).abs().max()) <= 2.0**-133
    assert float((y != 0).double().mean()) > 0.95


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_empty_inputs(kind, device):
    for shape in [(0, 16), (4, 0, 16)]:
        x = torch.randn(shape, device=device, requires_grad=True)
        w = torch.randn(16, device=device, requires_grad=True)
        y = norm_ext.layer_norm(x, (16,), w) if kind == "layer" else norm_ext.rms_norm(x, (16,), w)
        assert y.shape == x.shape
        y.sum().backward()
        assert x.grad.shape == x.shape
        torch.testing.assert_close(w.grad, torch.zeros_like(w))


@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_gradcheck_fp64(kind):
    x = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    if kind == "layer":
        torch.autograd.gradcheck(lambda x, w, b: norm_ext.layer_norm(x, (4, 5), w, b), (x, w, b))
    else:
        torch.autograd.gradcheck(lambda x, w: norm_ext.rms_norm(x, (4, 5), w, 1e-6), (x, w))


def test_rms_norm_default_eps_follows_torch():
    x = torch.randn(4, 8, dtype=torch.bfloat16)
    ours = norm_ext.rms_norm(x, (8,))
    ref = reference.rms_norm(x, (8,), eps=None)
    assert_close_to_reference(ours, ref, torch.bfloat16)


def _opcheck_samples(device):
    x = torch.randn(3, 5, 16, device=device, requires_grad=True)
    w = torch.randn(16, device=device, requires_grad=True)
    b = torch.randn(16, device=device, requires_grad=True)
    r = torch.randn(3, 5, 16, device=device, requires_grad=True)
    ops = torch.ops.norm_ext
    yield ops.layer_norm.default, (x, [16], w, b, 1e-5)
    yield ops.layer_norm.default, (x, [5, 16], None, None, 1e-5, False, True)
    yield ops.rms_norm.default, (x, [16], w, 1e-6, True)
    yield ops.add_layer_norm.default, (x, r, [16], w, b, 1e-5, None)
    yield ops.add_rms_norm.default, (x, r, [16], w, 1e-6, None, False, True)
    # The backward ops are not differentiable themselves (no double backward): feed them plain tensors.
    _, mean, rstd = (t.detach() for t in ops.layer_norm(x, [16], w, b, 1e-5))
    dy = torch.randn_like(x)
    yield ops.layer_norm_backward.default, (dy, x.detach(), [16], mean, rstd, w.detach(), b.detach())
    rstd = ops.rms_norm(x, [16], w, 1e-6)[1].detach()
    yield ops.rms_norm_backward.default, (dy, x.detach(), [16], rstd, None, False, False, dy)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for op, args in _opcheck_samples(device):
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("module_cls", ["LayerNorm", "RMSNorm"])
def test_torch_compile_fullgraph(module_cls):
    torch._dynamo.reset()
    m = getattr(norm_ext.nn, module_cls)(32)
    ref = getattr(torch.nn, module_cls)(32)
    with torch.no_grad():
        m.weight.normal_()
    ref.load_state_dict(m.state_dict())
    compiled = torch.compile(m, fullgraph=True)
    x = torch.randn(4, 6, 32, requires_grad=True)
    y = compiled(x)
    y.square().sum().backward()
    x_ref = x.detach().clone().requires_grad_(True)
    ref(x_ref).square().sum().backward()
    torch.testing.assert_close(y, ref(x.detach()), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(m.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("module_cls", ["LayerNorm", "RMSNorm"])
def test_state_dict_interchangeable_with_torch(module_cls):
    theirs = getattr(torch.nn, module_cls)((4, 8))
    with torch.no_grad():
        theirs.weight.uniform_()
    ours = getattr(norm_ext.nn, module_cls)((4, 8))
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(3, 4, 8)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    theirs.load_state_dict(ours.state_dict())
    assert set(ours.state_dict()) == set(theirs.state_dict())


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda x: norm_ext.layer_norm(x, (9,)), ValueError, "does not match the trailing dimensions"),
        (lambda x: norm_ext.layer_norm(x, (8,), torch.ones(7)), ValueError, "weight must have shape"),
        (lambda x: norm_ext.layer_norm(x, (8,), None, torch.ones(3)), ValueError, "bias must have shape"),
        (lambda x: norm_ext.layer_norm(x.long(), (8,)), TypeError, "input must be float32"),
        (lambda x: norm_ext.rms_norm(x.int(), (8,)), TypeError, "input must be float32"),
        (lambda x: norm_ext.layer_norm(x, (8,), eps=-1e-5), ValueError, "eps must be"),
        (lambda x: norm_ext.rms_norm(x, (8,), eps=-1.0), ValueError, "eps must be"),
        (lambda x: norm_ext.layer_norm(x, (8,), torch.ones(8, dtype=torch.int32)), TypeError, "weight must have"),
        (lambda x: norm_ext.layer_norm(x, ()), ValueError, "at least one dimension"),
        (lambda x: norm_ext.layer_norm("x", (8,)), TypeError, "input must be a torch.Tensor"),
        (lambda x: norm_ext.add_layer_norm(x, x[:, :4], (8,)), ValueError, "residual has shape"),
        (
            lambda x: norm_ext.add_rms_norm(x.double(), x.double(), (8,), residual_dtype=torch.float16),
            TypeError,
            "residual_dtype must be",
        ),
    ],
)
def test_bad_input_raises_named_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call(torch.randn(4, 8))


@needs_cuda
def test_weight_on_another_device_raises():
    # Two devices are needed: the SIMT backend serves CPU tensors only.
    x = torch.randn(4, 8, device="cuda")
    with pytest.raises(RuntimeError, match="weight is on cpu but input is on cuda"):
        norm_ext.layer_norm(x, (8,), torch.ones(8))


@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_double_backward_raises(kind):
    x = torch.randn(4, 16, dtype=torch.float64, requires_grad=True)
    y = norm_ext.layer_norm(x, (16,)) if kind == "layer" else norm_ext.rms_norm(x, (16,))
    (gx,) = torch.autograd.grad(y, x, torch.randn_like(y), create_graph=True)
    with pytest.raises(RuntimeError, match=f"derivative for norm_ext::{kind}_norm_backward is not implemented"):
        gx.sum().backward()


_STREAMED_CHILD = """
import sys, torch
sys.path.insert(0, {tests_dir!r})
from test_row_norm import _check_forward_backward, _params
torch.manual_seed(0)
for dtype in (torch.float32, torch.bfloat16):
    for cols in (4096, 4099):
        rows = (40 << 20) // (cols * dtype.itemsize)
        # A resident block the size of the outputs, freed so that the allocator hands it out again.
        torch.ones(rows * cols + 4096, dtype=dtype).zero_()
        x = torch.randn(rows, cols, dtype=dtype) * 2 + 0.5
        w, b = _params((cols,), dtype, "cpu")
        for kind in ("layer", "rms"):
            _check_forward_backward(kind, x, (cols,), w, b, 1e-5, dtype)
print("streamed ok")
"""


def test_streamed_outputs_match_reference():
    # Outputs of 32 MiB and more are written with non-temporal stores, but only into memory that is
    # already mapped in (see should_stream in csrc/cpu/vec_convert.h). torch's allocator maps large
    # blocks afresh on every call, so the child process makes glibc keep freed blocks (no mmap, no
    # trim) and the kernels then write 40 MiB outputs, rows aligned (4096) and not (4099), streamed.
    env = {**os.environ, "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}
    code = _STREAMED_CHILD.format(tests_dir=os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "streamed ok" in result.stdout
