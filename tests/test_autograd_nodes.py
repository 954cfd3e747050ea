"""The graph nodes of csrc/autograd/ as autograd's users meet them: gradients against the float64
reference under compiled autograd (whose capture swaps the saved tensors of every node), saved tensors
freed after a backward and checked for in-place writes, no reference cycle through an output the node
saves, and forward-mode AD refused with the op's name."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from conftest import DEVICES
from test_power_norm import _mask, _run_pair, _steps

import norm_ext
import norm_ext.functional as F
from norm_ext import reference as ref

TOL = dict(atol=1e-9, rtol=1e-9)


def _leaf(*shape, scale=1.0, shift=0.0, device="cpu"):
    return (torch.randn(*shape, dtype=torch.float64, device=device) * scale + shift).requires_grad_()


def _row_norms(device):
    x, r = _leaf(3, 5, 16, device=device), _leaf(3, 5, 16, device=device)
    w, b = _leaf(16, shift=1.0, device=device), _leaf(16, device=device)
    return {
        "layer_norm": (
            [x, w, b],
            lambda x, w, b: F.layer_norm(x, (16,), w, b),
            lambda x, w, b: ref.layer_norm(x, (16,), w, b),
        ),
        "layer_norm memory_efficient": (
            [x, w, b],
            lambda x, w, b: F.layer_norm(x, (16,), w, b, memory_efficient=True),
            lambda x, w, b: ref.layer_norm(x, (16,), w, b),
        ),
        "rms_norm": ([x, w], lambda x, w: F.rms_norm(x, (16,), w, 1e-6), lambda x, w: ref.rms_norm(x, (16,), w, 1e-6)),
        # Both outputs of the fused ops carry gradient: y, and h, the residual stream.
        "add_layer_norm": (
            [x, r, w, b],
            lambda x, r, w, b: sum(t * (i + 1) for i, t in enumerate(F.add_layer_norm(x, r, (16,), w, b))),
            lambda x, r, w, b: ref.layer_norm(x + r, (16,), w, b) + 2 * (x + r),
        ),
        "add_rms_norm": (
            [x, r, w],
            lambda x, r, w: sum(t * (i + 1) for i, t in enumerate(F.add_rms_norm(x, r, (16,), w, 1e-6))),
            lambda x, r, w: ref.rms_norm(x + r, (16,), w, 1e-6) + 2 * (x + r),
        ),
    }


def _other_norms(device):
    x = _leaf(4, 6, 3, 5, device=device)
    w, b = _leaf(6, shift=1.0, device=device), _leaf(6, device=device)
    mean = torch.randn(6, dtype=torch.float64, device=device)
    var = torch.rand(6, dtype=torch.float64, device=device) + 0.5
    v, g = _leaf(7, 5, device=device), _leaf(7, 1, shift=2.0, device=device)
    return {
        "group_norm": ([x, w, b], lambda x, w, b: F.group_norm(x, 3, w, b), lambda x, w, b: ref.group_norm(x, 3, w, b)),
        "batch_norm train": (
            [x, w, b],
            lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
            lambda x, w, b: ref.batch_norm(x, None, None, w, b, training=True)[0],
        ),
        "batch_norm eval": (
            [x, w, b],
            lambda x, w, b: F.batch_norm(x, mean, var, w, b, training=False),
            lambda x, w, b: ref.batch_norm(x, mean, var, w, b, training=False)[0],
        ),
        "weight_norm": ([v, g], lambda v, g: F.weight_norm(v, g, 0), lambda v, g: ref.weight_norm(v, g, 0)),
    }


def _cases(device):
    return {**_row_norms(device), **_other_norms(device)}


CASES = list(_cases("cpu"))


def _grads(fn, leaves, grad_out):
    out = fn(*leaves)
    return torch.autograd.grad(out, leaves, grad_out)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", CASES)
def test_compiled_autograd_matches_reference(name, device):
    torch._dynamo.reset()
    leaves, ours, reference = _cases(device)[name]
    expected = _grads(reference, leaves, torch.ones_like(reference(*leaves)))
    with torch._dynamo.compiled_autograd._enable(torch.compile(backend="eager", fullgraph=True)):
        out = ours(*leaves)
        got = torch.autograd.grad(out, leaves, torch.ones_like(out))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, **TOL)


def test_compiled_autograd_power_norm_matches_reference():
    torch._dynamo.reset()
    kw = dict(alpha_fwd=0.8, alpha_bkw=0.7, eps=1e-5, warmup_iters=1, group_num=2)
    module = norm_ext.nn.PowerNorm(12, **kw, dtype=torch.float64)
    with torch._dynamo.compiled_autograd._enable(torch.compile(backend="eager")):
        _run_pair(
            module,
            ref.PowerNormState(12),
            _steps(3, (3, 10, 12)),
            _mask(3, 10, [10, 4, 8]),
            torch.float64,
            "cpu",
            **kw,
        )


# A leaf each node saves: the input, except where the node saves the output (memory-efficient mode)
# or h (the fused ops) in its place.
SAVED_LEAF = {"layer_norm memory_efficient": 1, "add_layer_norm": 2, "add_rms_norm": 2}


@pytest.mark.parametrize("name", CASES)
def test_saved_tensors_are_freed_and_checked_for_writes(name):
    leaves, ours, _ = _cases("cpu")[name]
    out = ours(*leaves)
    out.sum().backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        out.sum().backward()
    out = ours(*leaves)
    with torch.no_grad():
        leaves[SAVED_LEAF.get(name, 0)].add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


@pytest.mark.parametrize("fused", [False, True])
def test_a_saved_output_does_not_keep_its_graph_alive(fused):
    """Memory-efficient mode saves the output (y), and the fused ops save h; both hold the node as
    their grad_fn, which must not own them back."""
    x, w, b = _leaf(2, 8), _leaf(8), _leaf(8)
    if fused:
        out = F.add_layer_norm(x, torch.randn(2, 8, dtype=torch.float64), (8,), w, b)[1]
    else:
        out = F.layer_norm(x, (8,), w, b, memory_efficient=True)
    alive = weakref.ref(out)
    del out
    gc.collect()
    assert alive() is None


@pytest.mark.parametrize("name", CASES)
def test_forward_mode_ad_is_refused_by_name(name):
    leaves, ours, _ = _cases("cpu")[name]
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        dual = fwAD.make_dual(leaves[0].detach(), torch.ones_like(leaves[0]))
        with pytest.raises(NotImplementedError, match=r"norm_ext::\w+: forward-mode automatic differentiation"):
            ours(dual, *leaves[1:])


@pytest.mark.parametrize("name", CASES)
def test_torch_func_grad_matches_reference(name):
    """torch.func's grad transform differentiates through the nodes as through torch's own."""
    leaves, ours, reference = _cases("cpu")[name]
    detached = [t.detach() for t in leaves]
    weights = torch.randn_like(reference(*leaves))

    def loss(fn):
        return lambda *args: (fn(*args) * weights).sum()

    argnums = tuple(range(len(leaves)))
    got = torch.func.grad(loss(ours), argnums)(*detached)
    expected = torch.func.grad(loss(reference), argnums)(*detached)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, **TOL)
