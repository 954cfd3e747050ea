import pytest
import torch
from conftest import DEVICES
from torch.nn.utils import parametrizations as torch_param

import norm_ext
from norm_ext import reference

TOL = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float64: dict(atol=1e-12, rtol=1e-12),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
}
# The CPU kernels vectorize along a slice's row when it is long (dim=0: 27, 2100 with several sum
# chunks) and across slices when inner = 1 (dim=-1: 70 slices, two vector pairs and a tail). The GPU
# kernels read slices shorter inside than a warp across (inner 1, 3, 5, 27); 1100 rows take several
# row chunks, 40 and 60 columns a partial second tile.
SHAPES_DIMS = [
    ((8, 5), 0),
    ((8, 5), 1),
    ((6, 3, 3, 3), 0),
    ((4, 6, 5), 1),
    ((3, 4, 5), 2),
    ((7, 4), None),
    ((40, 2100), 0),
    ((37, 70), 1),
    ((33, 65), None),
    ((1100, 40), 1),
    ((300, 20, 3), 1),
]


def _g_shape(shape, dim):
    return () if dim is None else tuple(s if d == dim else 1 for d, s in enumerate(shape))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("shape,dim", SHAPES_DIMS)
def test_forward_backward_parity(device, dtype, shape, dim):
    v = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    g = (torch.rand(_g_shape(shape, dim), device=device, dtype=dtype) + 0.5).requires_grad_()
    w = norm_ext.functional.weight_norm(v, g, dim)
    v64 = v.detach().double().requires_grad_()
    g64 = g.detach().double().requires_grad_()
    w64 = reference.weight_norm(v64, g64, dim)
    torch.testing.assert_close(w.double(), w64, **TOL[dtype])
    grad = torch.randn_like(w)
    w.backward(grad)
    w64.backward(grad.double())
    torch.testing.assert_close(v.grad.double(), v64.grad, **TOL[dtype])
    torch.testing.assert_close(g.grad.double(), g64.grad, **TOL[dtype])


def test_float32_g_with_bf16_v():
    v = torch.randn(6, 4, dtype=torch.bfloat16)
    g = torch.rand(6, 1) + 0.5
    w = norm_ext.functional.weight_norm(v, g, 0)
    assert w.dtype == torch.bfloat16
    torch.testing.assert_close(w.double(), reference.weight_norm(v, g, 0), **TOL[torch.bfloat16])


@pytest.mark.parametrize("dim", [0, 1, None])
def test_opcheck(dim):
    v = torch.randn(5, 3, 2, dtype=torch.float64, requires_grad=True)
    g = torch.rand(_g_shape(v.shape, dim), dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.norm_ext.weight_norm, (v, g, dim))
    w, norm = torch.ops.norm_ext.weight_norm(v, g, dim)
    torch.library.opcheck(
        torch.ops.norm_ext.weight_norm_backward, (torch.randn_like(w), v.detach(), g.detach(), norm.detach(), dim)
    )


def _modules():
    return [torch.nn.Linear(7, 5), torch.nn.Conv2d(3, 4, 3), torch.nn.ConvTranspose1d(4, 3, 3)]


INPUT_SHAPES = [(2, 7), (2, 3, 6, 6), (2, 4, 6)]


@pytest.mark.parametrize("dim", [0, 1, None])
@pytest.mark.parametrize("index", range(3))
def test_module_matches_torch_and_state_dicts_interchange(dim, index):
    ours = norm_ext.weight_norm(_modules()[index], dim=dim)
    theirs = torch_param.weight_norm(_modules()[index], dim=dim)
    assert set(ours.state_dict()) == set(theirs.state_dict())
    assert "parametrizations.weight.original0" in ours.state_dict()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(INPUT_SHAPES[index])
    torch.testing.assert_close(ours(x), theirs(x))
    ours.load_state_dict(theirs.state_dict())
    ours(x).square().sum().backward()
    theirs(x).square().sum().backward()
    for key in ("original0", "original1"):
        ours_grad = getattr(ours.parametrizations.weight, key).grad
        torch.testing.assert_close(ours_grad, getattr(theirs.parametrizations.weight, key).grad)


def test_remove_weight_norm_folds_back():
    module = norm_ext.weight_norm(torch.nn.Linear(6, 4), dim=0)
    with torch.no_grad():
        module.parametrizations.weight.original0.mul_(2.0)
    expected = module.weight.detach().clone()
    norm_ext.remove_weight_norm(module)
    assert not hasattr(module, "parametrizations")
    assert isinstance(module.weight, torch.nn.Parameter)
    torch.testing.assert_close(module.weight.detach(), expected)
    with pytest.raises(ValueError, match="not parametrized"):
        norm_ext.remove_weight_norm(module)


def test_old_style_keys_load():
    legacy = {"weight_g": torch.rand(4, 1) + 0.5, "weight_v": torch.randn(4, 6), "bias": torch.zeros(4)}
    module = norm_ext.weight_norm(torch.nn.Linear(6, 4))
    module.load_state_dict(legacy)
    torch.testing.assert_close(module.weight.double(), reference.weight_norm(legacy["weight_v"], legacy["weight_g"]))


def test_compile_module_forward_backward():
    module = norm_ext.weight_norm(torch.nn.Linear(6, 4))
    compiled = torch.compile(module, fullgraph=True)
    x = torch.randn(3, 6)
    torch.testing.assert_close(compiled(x), module(x))
    compiled(x).sum().backward()
    assert module.parametrizations.weight.original1.grad is not None


def test_bad_input():
    v = torch.randn(4, 3)
    with pytest.raises(ValueError, match="one element per slice"):
        torch.ops.norm_ext.weight_norm(v, torch.ones(3, 1), 0)
    with pytest.raises(ValueError, match="out of range"):
        norm_ext.functional.weight_norm(v, torch.ones(4, 1), 2)
    with pytest.raises(TypeError, match="g must have v's dtype"):
        torch.ops.norm_ext.weight_norm(v, torch.ones(4, 1, dtype=torch.float64), 0)
    with pytest.raises(TypeError, match="v must be float32"):
        torch.ops.norm_ext.weight_norm(v.int(), torch.ones(4, 1), 0)
    with pytest.raises(ValueError, match="no tensor attribute"):
        norm_ext.weight_norm(torch.nn.Linear(3, 2), name="nope")
