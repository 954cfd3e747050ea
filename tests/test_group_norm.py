"""GroupNorm (+ fused SiLU): parity with float64 references, autograd, opcheck, compile and bad input."""

import pytest
import torch
from conftest import DEVICES, GPU_DEVICES, on_simt
from tolerances import BACKWARD, FORWARD, assert_close_to_reference, assert_grads_close_to_reference, leaf

import norm_ext
from norm_ext import reference, simt

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# (shape, num_groups, channels_last): odd C, C = 65, groups 1 / C / in between, 2-D to 5-D inputs.
# The GPU kernels take channels-last groups narrower than a warp in channel tiles (C / G of 1, 2, 3,
# 5; 65 channels: a partial third tile) and wider ones (32, 64) a group at a time; the dweight /
# dbias reduction splits the 18200 and 3000 rows of "big" and "cl-wide-big".
SHAPES = [
    ((4, 6), 3, False),
    ((3, 7, 11), 7, False),
    ((2, 65, 9), 5, False),
    ((2, 65, 9), 1, False),
    ((2, 12, 5, 7), 4, False),
    ((2, 12, 5, 7), 4, True),
    ((2, 65, 3, 5), 13, True),
    ((1, 9, 4, 4), 9, True),
    ((2, 8, 3, 4, 5), 2, False),
    ((2, 8, 3, 4, 5), 8, True),
    ((1, 4, 130, 140), 2, False),
    ((1, 4, 130, 140), 2, True),
    ((2, 64, 6, 7), 2, True),
    ((1, 64, 50, 60), 1, True),
]
SHAPE_IDS = [
    "2d",
    "3d-G=C",
    "C65",
    "C65-G1",
    "4d",
    "4d-cl",
    "4d-cl-C65",
    "4d-cl-G=C",
    "5d",
    "5d-cl-G=C",
    "big",
    "big-cl",
    "4d-cl-wide-groups",
    "cl-wide-big",
]


def _memory_format(dim):
    return torch.channels_last if dim == 4 else torch.channels_last_3d


def _make_input(shape, dtype, device, channels_last, scale=2.0, offset=0.5):
    x = torch.randn(shape, dtype=torch.float64, device=device) * scale + offset
    x = x.to(dtype)
    return x.contiguous(memory_format=_memory_format(len(shape))) if channels_last else x


def check_group_norm(x, num_groups, w, b, eps, dtype, activation=None):
    x, w, b = leaf(x), leaf(w), leaf(b)
    y = norm_ext.group_norm(x, num_groups, w, b, eps, activation=activation)
    assert y.dtype == x.dtype and y.shape == x.shape and y.stride() == x.stride()
    x64, w64, b64 = (leaf(t, torch.float64) for t in (x, w, b))
    y64 = reference.group_norm(x64, num_groups, w64, b64, eps, activation)
    assert_close_to_reference(y, y64, dtype, FORWARD, "output")
    grads = assert_grads_close_to_reference(y, y64, (x, w, b), (x64, w64, b64), dtype)
    assert grads[0].stride() == x.stride()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("shape,num_groups,channels_last", SHAPES, ids=SHAPE_IDS)
def test_parity_fp32(shape, num_groups, channels_last, activation, device):
    x = _make_input(shape, torch.float32, device, channels_last)
    w = torch.randn(shape[1], device=device)
    b = torch.randn(shape[1], device=device)
    check_group_norm(x, num_groups, w, b, 1e-5, torch.float32, activation)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_parity_dtypes(dtype, channels_last, activation, device):
    x = _make_input((3, 20, 6, 7), dtype, device, channels_last)
    w = torch.randn(20, dtype=dtype, device=device)
    b = torch.randn(20, dtype=dtype, device=device)
    check_group_norm(x, 5, w, b, 1e-5, dtype, activation)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_fp32_params_with_low_precision_input(dtype, device):
    x = _make_input((2, 12, 5, 5), dtype, device, True)
    check_group_norm(x, 3, torch.randn(12, device=device), torch.randn(12, device=device), 1e-5, dtype, "silu")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("with_weight,with_bias", [(False, False), (True, False), (False, True)])
def test_optional_affine(with_weight, with_bias, activation, device):
    x = _make_input((3, 10, 4, 5), torch.float32, device, False)
    w = torch.randn(10, device=device) if with_weight else None
    b = torch.randn(10, device=device) if with_bias else None
    check_group_norm(x, 5, w, b, 1e-5, torch.float32, activation)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_large_offset_fp32(channels_last, device):
    # mean 1e4, std 1e-2: E[x^2] - E[x]^2 would cancel to noise in fp32, and so would an output
    # computed as x * a + (b - mean * a).
    x = _make_input((2, 8, 33, 35), torch.float32, device, channels_last, scale=1e-2, offset=1e4)
    y, mean, rstd = torch.ops.norm_ext.group_norm(x, 4, None, None, 1e-5, None)
    x64 = x.double()
    grouped = x64.reshape(2, 4, -1)
    torch.testing.assert_close(mean.double(), grouped.mean(2), rtol=1e-7, atol=0)
    torch.testing.assert_close(rstd.double(), 1 / torch.sqrt(grouped.var(2, unbiased=False) + 1e-5), rtol=2e-5, atol=0)
    # The fp32 mean itself is rounded by up to half an ulp of 1e4 (5e-4, i.e. 0.05 std), which bounds
    # the output's accuracy; a cancelled variance would be off by orders of magnitude.
    torch.testing.assert_close(y.double(), reference.group_norm(x64, 4), rtol=0, atol=0.1)


@pytest.mark.parametrize("threads", [1, 4], ids=["one-sample-per-thread", "blocks-of-rows"])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cpu_channels_last_paths(dtype, activation, threads):
    # The CPU forward and backward take channels-last input one sample per thread when the batch
    # spreads evenly over the threads (N = 3 on 1 thread), and by blocks of rows across threads
    # otherwise (N = 3 on 4). 4355 rows of C = 24 make seven row blocks, the last with a partial
    # sweep, and a channel tail past the 16-lane vectors; the large offset checks that both paths
    # keep the shift.
    x = _make_input((3, 24, 67, 65), dtype, "cpu", True, offset=50.0)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        check_group_norm(x, 6, torch.randn(24, dtype=dtype), torch.randn(24, dtype=dtype), 1e-5, dtype, activation)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_input(device):
    x = _make_input((3, 12, 6, 10), torch.float32, device, False)[:, :, :, ::2]
    check_group_norm(x.contiguous(), 4, None, None, 1e-5, torch.float32)
    y = norm_ext.group_norm(x, 4)
    assert y.is_contiguous()
    assert_close_to_reference(y, reference.group_norm(x, 4), torch.float32, FORWARD, "strided output")


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    x = torch.randn(0, 6, 4, device=device, requires_grad=True)
    y = norm_ext.group_norm(x, 3)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape


def test_deterministic():
    x = _make_input((2, 16, 40, 50), torch.float32, "cpu", True)
    dy = torch.randn_like(x)
    results = []
    for threads in (1, 2):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            w, b = torch.ones(16), torch.zeros(16)
            y, mean, rstd = torch.ops.norm_ext.group_norm(x, 4, w, b, 1e-5, "silu")
            grads = torch.ops.norm_ext.group_norm_backward(dy, x, 4, mean, rstd, w, b, "silu")
        finally:
            torch.set_num_threads(previous)
        results.append((y, mean, rstd, *grads))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_gradcheck_fp64():
    for channels_last, activation in [(False, None), (True, "silu")]:
        x = _make_input((2, 6, 3, 4), torch.float64, "cpu", channels_last).requires_grad_(True)
        w = torch.randn(6, dtype=torch.float64, requires_grad=True)
        b = torch.randn(6, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(
            lambda x, w, b, a=activation: norm_ext.group_norm(x, 3, w, b, activation=a), (x, w, b)
        )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_opcheck(channels_last, device):
    x = _make_input((2, 6, 3, 5), torch.float32, device, channels_last).requires_grad_(True)
    w = torch.randn(6, device=device, requires_grad=True)
    b = torch.randn(6, device=device, requires_grad=True)
    for activation in (None, "silu"):
        torch.library.opcheck(torch.ops.norm_ext.group_norm.default, (x, 3, w, b, 1e-5, activation))
        _, mean, rstd = torch.ops.norm_ext.group_norm(x, 3, w, b, 1e-5, activation)
        args = (torch.randn_like(x), x.detach(), 3, mean.detach(), rstd.detach(), w.detach(), b.detach(), activation)
        torch.library.opcheck(torch.ops.norm_ext.group_norm_backward.default, args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", [None, "silu"])
def test_module_compile_fullgraph(activation, device):
    module = norm_ext.nn.GroupNorm(4, 12, activation=activation).to(device)
    with torch.no_grad():
        module.weight.normal_()
        module.bias.normal_()
    compiled = torch.compile(module, fullgraph=True)
    x = _make_input((2, 12, 5, 6), torch.float32, device, True).requires_grad_(True)
    y = compiled(x)
    y.square().sum().backward()
    x64 = x.detach().double().requires_grad_(True)
    w64 = module.weight.detach().double().requires_grad_(True)
    y64 = reference.group_norm(x64, 4, w64, module.bias.detach().double(), activation=activation)
    y64.square().sum().backward()
    assert_close_to_reference(y, y64, torch.float32, FORWARD, "compiled output")
    assert_close_to_reference(x.grad, x64.grad, torch.float32, BACKWARD, "compiled dx")
    assert_close_to_reference(module.weight.grad, w64.grad, torch.float32, BACKWARD, "compiled dweight")


def test_module_matches_torch_and_state_dict():
    ours = norm_ext.nn.GroupNorm(3, 9, eps=1e-4, activation="silu")
    theirs = torch.nn.GroupNorm(3, 9, eps=1e-4)
    with torch.no_grad():
        theirs.weight.normal_()
        theirs.bias.normal_()
    ours.load_state_dict(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    x = torch.randn(2, 9, 4, 4)
    torch.testing.assert_close(ours(x), torch.nn.functional.silu(theirs(x)), rtol=1e-5, atol=1e-5)
    assert "activation='silu'" in repr(ours)
    plain = norm_ext.nn.GroupNorm(3, 9, affine=False)
    assert plain.weight is None and len(plain.state_dict()) == 0
    assert isinstance(ours, torch.nn.GroupNorm)


def test_bad_input():
    x = torch.randn(2, 6, 4)
    with pytest.raises(ValueError, match="num_groups .4. must divide the number of channels .6."):
        norm_ext.group_norm(x, 4)
    with pytest.raises(ValueError, match="num_groups must be positive"):
        norm_ext.group_norm(x, 0)
    with pytest.raises(ValueError, match="weight must have shape"):
        norm_ext.group_norm(x, 3, torch.ones(5))
    with pytest.raises(ValueError, match="bias must have shape"):
        norm_ext.group_norm(x, 3, None, torch.ones(6, 1))
    with pytest.raises(TypeError, match="weight must have the input's dtype"):
        norm_ext.group_norm(x, 3, torch.ones(6, dtype=torch.float64))
    with pytest.raises(TypeError, match="input must be float32, float64, float16 or bfloat16"):
        norm_ext.group_norm(torch.ones(2, 6, 4, dtype=torch.int32), 3)
    with pytest.raises(ValueError, match="eps must be a finite non-negative number"):
        norm_ext.group_norm(x, 3, eps=-1e-5)
    with pytest.raises(ValueError, match="activation must be None or 'silu'"):
        norm_ext.group_norm(x, 3, activation="relu")
    with pytest.raises(ValueError, match="activation must be None or 'silu'"):
        torch.ops.norm_ext.group_norm(x, 3, None, None, 1e-5, "gelu")
    with pytest.raises(ValueError, match="input must have shape .N, C, .."):
        norm_ext.group_norm(torch.randn(6), 3)
    with pytest.raises(TypeError, match="num_groups must be an int"):
        norm_ext.group_norm(x, 3.0)
    with pytest.raises(ValueError, match="activation must be None or 'silu'"):
        norm_ext.nn.GroupNorm(3, 6, activation="tanh")
    _, mean, rstd = torch.ops.norm_ext.group_norm(x, 3, None, None, 1e-5, None)
    with pytest.raises(ValueError, match="mean must have shape .N, num_groups."):
        torch.ops.norm_ext.group_norm_backward(x, x, 3, mean[:1], rstd, None, None, None)
    with pytest.raises(ValueError, match="grad_out has shape"):
        torch.ops.norm_ext.group_norm_backward(x[:1], x, 3, mean, rstd, None, None, None)


@pytest.mark.parametrize("device", GPU_DEVICES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_deterministic_and_launches(channels_last, device, request):
    """Two launches forward; backward two and the dweight / dbias fold. Channels-last groups of 4
    channels (narrower than a warp) take the channel-tiled kernels."""
    x = _make_input((2, 32, 40, 40), torch.float32, device, channels_last)
    w, b = torch.randn(32, device=device), torch.randn(32, device=device)
    dy = torch.randn_like(x)

    def forward():
        return torch.ops.norm_ext.group_norm(x, 8, w, b, 1e-5, "silu")

    def backward(mean, rstd):
        return torch.ops.norm_ext.group_norm_backward(dy, x, 8, mean, rstd, w, b, "silu")

    def run():
        y, mean, rstd = forward()
        return (y, mean, rstd, *backward(mean, rstd))

    first = run()
    if on_simt(request):
        # The same bits whatever order the threads run in.
        with simt.serving("reverse"):
            second = run()
    else:
        second = run()
    for a, b_ in zip(first, second):
        assert torch.equal(a, b_)

    if on_simt(request):
        with simt.launch_log() as forward_launches:
            _, mean, rstd = forward()
        with simt.launch_log() as backward_launches:
            backward(mean, rstd)
        tiled = "_tiled" if channels_last else ""
        assert [launch.name for launch in forward_launches] == [
            f"group_stats{tiled}_kernel",
            f"group_norm_apply{tiled}_kernel",
        ]
        assert [launch.name for launch in backward_launches] == [
            "group_norm_backward_tiled_kernel" if channels_last else "group_norm_backward_reduce_kernel",
            f"group_norm_grad_input{tiled}_kernel",
            "group_norm_param_grad_fold_kernel",
        ]
        return
    torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as forward_prof:
        _, mean, rstd = forward()
        torch.cuda.synchronize()
    with torch.profiler.profile(activities=activities) as backward_prof:
        backward(mean, rstd)
        torch.cuda.synchronize()

    def kernels(prof):
        return [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]

    assert len(kernels(forward_prof)) <= 2, kernels(forward_prof)
    assert len(kernels(backward_prof)) <= 3, kernels(backward_prof)
