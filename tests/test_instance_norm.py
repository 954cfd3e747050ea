"""InstanceNorm (GroupNorm with one group per channel): parity, running statistics, modules, compile."""

import pytest
import torch
from conftest import DEVICES
from tolerances import BACKWARD, FORWARD, assert_close_to_reference, assert_grads_close_to_reference, leaf

import norm_ext
from norm_ext import reference

MODULES = [
    (norm_ext.nn.InstanceNorm1d, torch.nn.InstanceNorm1d, (3, 5, 17)),
    (norm_ext.nn.InstanceNorm2d, torch.nn.InstanceNorm2d, (3, 5, 6, 7)),
    (norm_ext.nn.InstanceNorm3d, torch.nn.InstanceNorm3d, (2, 5, 3, 4, 5)),
]
MODULE_IDS = ["1d", "2d", "3d"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_functional_parity(dtype, channels_last, device):
    x = (torch.randn(3, 7, 5, 6, dtype=torch.float64, device=device) * 2 + 1).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    w = torch.randn(7, dtype=dtype, device=device, requires_grad=True)
    b = torch.randn(7, dtype=dtype, device=device, requires_grad=True)
    y = norm_ext.instance_norm(x, weight=w, bias=b)
    assert y.stride() == x.stride()
    leaves64 = [leaf(t, torch.float64) for t in (x, w, b)]
    y64 = reference.instance_norm(*leaves64)
    assert_close_to_reference(y, y64, dtype, FORWARD, "output")
    assert_grads_close_to_reference(y, y64, (x, w, b), leaves64, dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_running_stats_update_and_eval(device):
    x = torch.randn(4, 6, 9, 10, device=device) * 3 + 2
    running_mean = torch.randn(6, device=device)
    running_var = torch.rand(6, device=device) + 0.5
    expected_mean, expected_var = reference.instance_norm_running_stats(x, running_mean, running_var, momentum=0.3)
    y = norm_ext.instance_norm(x, running_mean, running_var, momentum=0.3)
    assert_close_to_reference(y, reference.instance_norm(x), torch.float32, FORWARD, "training output")
    torch.testing.assert_close(running_mean.double(), expected_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(running_var.double(), expected_var, rtol=1e-5, atol=1e-5)

    w, b = torch.randn(6, device=device), torch.randn(6, device=device)
    y_eval = norm_ext.instance_norm(x, running_mean, running_var, w, b, use_input_stats=False)
    expected = reference.instance_norm_eval(x, running_mean, running_var, w, b)
    assert_close_to_reference(y_eval, expected, torch.float32, FORWARD, "eval output")


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("track_running_stats", [False, True])
@pytest.mark.parametrize("ours_cls,torch_cls,shape", MODULES, ids=MODULE_IDS)
def test_module_matches_torch(ours_cls, torch_cls, shape, affine, track_running_stats):
    theirs = torch_cls(5, affine=affine, track_running_stats=track_running_stats, momentum=0.2)
    if affine:
        with torch.no_grad():
            theirs.weight.normal_()
            theirs.bias.normal_()
    ours = ours_cls(5, affine=affine, track_running_stats=track_running_stats, momentum=0.2)
    ours.load_state_dict(theirs.state_dict())
    assert isinstance(ours, torch_cls)
    for step in range(2):
        x = torch.randn(shape) * 2 + step
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours(x[0]), theirs(x[0]), rtol=1e-5, atol=1e-5)
    for key, value in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)
    ours.eval()
    theirs.eval()
    x = torch.randn(shape)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    theirs.load_state_dict(ours.state_dict())


@pytest.mark.parametrize("device", DEVICES)
def test_module_compile_fullgraph(device):
    module = norm_ext.nn.InstanceNorm2d(4, affine=True, track_running_stats=True).to(device)
    compiled = torch.compile(module, fullgraph=True)
    x = (torch.randn(2, 4, 5, 6, device=device) + 1).requires_grad_(True)
    y = compiled(x)
    y.square().sum().backward()
    x64 = x.detach().double().requires_grad_(True)
    w64 = module.weight.detach().double().requires_grad_(True)
    y64 = reference.instance_norm(x64, w64, module.bias.detach().double())
    y64.square().sum().backward()
    assert_close_to_reference(y, y64, torch.float32, FORWARD, "compiled output")
    assert_close_to_reference(x.grad, x64.grad, torch.float32, BACKWARD, "compiled dx")
    assert_close_to_reference(module.weight.grad, w64.grad, torch.float32, BACKWARD, "compiled dweight")
    expected_mean, _ = reference.instance_norm_running_stats(x, torch.zeros(4), torch.ones(4))
    torch.testing.assert_close(module.running_mean.double().cpu(), expected_mean.cpu(), rtol=1e-5, atol=1e-6)


def test_gradcheck_fp64():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: norm_ext.instance_norm(x, weight=w, bias=b), (x, w, b))


def test_bad_input():
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        norm_ext.instance_norm(torch.randn(2, 3, 1))
    with pytest.raises(ValueError, match="weight must have shape"):
        norm_ext.instance_norm(x, weight=torch.ones(4))
    with pytest.raises(ValueError, match="eps must be a finite non-negative number"):
        norm_ext.instance_norm(x, eps=-1.0)
    with pytest.raises(ValueError, match="eps must be a finite non-negative number"):
        norm_ext.instance_norm(x, torch.zeros(3), torch.ones(3), use_input_stats=False, eps=-1.0)
    with pytest.raises(ValueError, match="needs running_mean and running_var"):
        norm_ext.instance_norm(x, use_input_stats=False)
    with pytest.raises(ValueError, match="must be given together"):
        norm_ext.instance_norm(x, running_mean=torch.zeros(3))
    with pytest.raises(TypeError, match="input must be float32"):
        norm_ext.instance_norm(torch.ones(2, 3, 4, dtype=torch.int64))
