import copy
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import DEVICES, GPU_DEVICES

import norm_ext
from norm_ext import reference

TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float64: dict(atol=1e-10, rtol=1e-10)}


def _mask(batch, time, lengths):
    return torch.arange(time)[None, :] >= torch.tensor(lengths)[:, None]


def _steps(num, shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(shape, generator=gen) * 3, torch.randn(shape, generator=gen)) for _ in range(num)]


def _run_pair(module, state, steps, pad_mask, dtype, device, **kw):
    """Trains `module` and the float64 reference side by side, comparing every step."""
    weight = module.weight.detach().double().cpu().requires_grad_()
    bias = module.bias.detach().double().cpu().requires_grad_()
    for x, grad in steps:
        module.zero_grad()
        x_ours = x.to(device, dtype).detach().requires_grad_()
        mask = None if pad_mask is None else pad_mask.to(device)
        y = module(x_ours, mask)
        x_ref = x.double().detach().requires_grad_()
        weight.grad = bias.grad = None
        y_ref = reference.power_norm(x_ref, state, weight, bias, pad_mask, **kw)
        torch.testing.assert_close(y.double().cpu(), y_ref, **TOL[dtype])
        y.backward(grad.to(device, dtype))
        y_ref.backward(grad.double())
        torch.testing.assert_close(x_ours.grad.double().cpu(), x_ref.grad, **TOL[dtype])
        torch.testing.assert_close(module.weight.grad.double().cpu(), weight.grad, **TOL[dtype])
        torch.testing.assert_close(module.bias.grad.double().cpu(), bias.grad, **TOL[dtype])
        torch.testing.assert_close(module.running_phi.double().cpu(), state.running_phi, **TOL[dtype])
        torch.testing.assert_close(module.ema_gz.double().cpu(), state.ema_gz, **TOL[dtype])
    assert int(module.iters) == state.step


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("group_num", [1, 2])
# (time, channels): one token block of 8 channels (a GPU warp row takes 4 tokens); three token blocks
# of 12 channels (16 lanes a token, 4 idle) and of 40 (two channel blocks, the second partial).
@pytest.mark.parametrize("time,channels", [(5, 8), (50, 12), (50, 40)])
def test_training_steps_match_reference(device, dtype, masked, group_num, time, channels):
    """Six steps across a warmup of three: the batch-statistics/running-statistics switch, the running
    psi^2 and Gamma updates and the approximate backward all follow the float64 transcription."""
    kw = dict(alpha_fwd=0.8, alpha_bkw=0.7, eps=1e-5, warmup_iters=3, group_num=group_num)
    module = norm_ext.nn.PowerNorm(channels, **kw, device=device, dtype=dtype)
    with torch.no_grad():
        module.weight.copy_(torch.linspace(0.5, 1.5, channels))
        module.bias.copy_(torch.linspace(-0.2, 0.2, channels))
    pad_mask = _mask(3, time, [time, time * 2 // 5, time * 4 // 5]) if masked else None
    steps = _steps(6, (3, time, channels))
    _run_pair(module, reference.PowerNormState(channels), steps, pad_mask, dtype, device, **kw)


def test_warmup_switch():
    module = norm_ext.nn.PowerNorm(4, warmup_iters=1)
    x = torch.randn(2, 3, 4) * 5
    scaled = reference.group_scaling(x, 1, 1e-5)
    batch_var = (scaled * scaled).mean(dim=(0, 1))
    torch.testing.assert_close(module(x).double(), scaled / torch.sqrt(batch_var + 1e-5), atol=1e-5, rtol=1e-5)
    running = module.running_phi.double().clone()
    # Step 1 is not before warmup_iters=1, so only the EMA from the initial psi^2 = 1 applies.
    torch.testing.assert_close(running, 0.9 + 0.1 * batch_var, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(module(x).double(), scaled / torch.sqrt(running + 1e-5), atol=1e-5, rtol=1e-5)


def test_eval_equals_train_after_warmup():
    module = norm_ext.nn.PowerNorm(6, warmup_iters=2, group_num=3)
    for x, _ in _steps(3, (2, 4, 6)):
        module(x)
    before = copy.deepcopy(module).eval()
    x = torch.randn(2, 4, 6)
    torch.testing.assert_close(module(x), before(x))
    assert not torch.equal(module.running_phi, before.running_phi)


@pytest.mark.parametrize("device", DEVICES)
def test_padded_tokens_contribute_nothing(device):
    """Changing the padding's values (with zero gradient there) changes no valid output, no gradient
    and no buffer, and matches running on the valid tokens alone."""
    pad_mask = _mask(1, 6, [4]).to(device)
    x = torch.randn(1, 6, 8, device=device)
    grad = torch.randn_like(x)
    grad[pad_mask] = 0
    results = []
    for fill in (0.0, 100.0):
        module = norm_ext.nn.PowerNorm(8, warmup_iters=2, device=device)
        xs = x.clone()
        xs[pad_mask] = fill
        for _ in range(3):
            xs.requires_grad_()
            y = module(xs, pad_mask)
            y.backward(grad)
        results.append(
            (y[~pad_mask].detach(), xs.grad[~pad_mask], module.weight.grad, module.running_phi, module.ema_gz)
        )
        xs = xs.detach()
    truncated = norm_ext.nn.PowerNorm(8, warmup_iters=2, device=device)
    xt = x[:, :4].clone()
    for _ in range(3):
        xt.requires_grad_()
        yt = truncated(xt)
        yt.backward(grad[:, :4])
    results.append((yt[0].detach(), xt.grad[0], truncated.weight.grad, truncated.running_phi, truncated.ema_gz))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_bf16_input_with_float32_module():
    kw = dict(warmup_iters=1, group_num=2)
    module = norm_ext.nn.PowerNorm(8, **kw)
    state = reference.PowerNormState(8)
    steps = _steps(2, (2, 5, 8))
    weight, bias = torch.ones(8, dtype=torch.float64), torch.zeros(8, dtype=torch.float64)
    for x, grad in steps:
        xb = x.bfloat16().requires_grad_()
        y = module(xb)
        assert y.dtype == torch.bfloat16
        y_ref = reference.power_norm(xb.detach(), state, weight, bias, **kw)
        torch.testing.assert_close(y.double(), y_ref, atol=3e-2, rtol=2e-2)
        y.backward(grad.bfloat16())
        assert xb.grad.dtype == torch.bfloat16 and module.weight.grad.dtype == torch.float32
    torch.testing.assert_close(module.running_phi.double(), state.running_phi, atol=1e-2, rtol=1e-2)


def test_affine_false_and_authors_state_dict_layout():
    module = norm_ext.nn.PowerNorm(4, affine=False)
    assert module.weight is None and module.bias is None
    x = torch.randn(2, 3, 4, requires_grad=True)
    module(x).sum().backward()
    assert x.grad is not None
    authors = {
        "weight": torch.ones(4),
        "bias": torch.zeros(4),
        "running_phi": torch.full((1, 4, 1, 1), 2.0),
        "ema_gz": torch.full((1, 4, 1, 1), 0.5),
        "iters": torch.tensor([7]),
    }
    loaded = norm_ext.nn.PowerNorm(4)
    loaded.load_state_dict(authors)
    assert loaded.running_phi.shape == (4,) and float(loaded.running_phi[0]) == 2.0
    assert int(loaded.iters) == 7 and loaded.iters.shape == ()


def test_opcheck():
    ops = torch.ops.norm_ext
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    mask = _mask(2, 3, [3, 1])
    for pad in (None, mask):
        torch.library.opcheck(ops.power_norm_stats, (x, pad))
        scale = torch.rand(4, dtype=torch.float64) + 0.5
        weight = torch.rand(4, dtype=torch.float64, requires_grad=True)
        bias = torch.rand(4, dtype=torch.float64, requires_grad=True)
        ema = torch.zeros(4, dtype=torch.float64)
        torch.library.opcheck(ops.power_norm, (x.clone().requires_grad_(), scale, weight, bias, ema, pad, 0.9))
        torch.library.opcheck(ops.power_norm, (x, scale, None, None, ema, pad, 0.9))
        torch.library.opcheck(
            ops.power_norm_backward, (torch.randn_like(x), x, scale, weight.detach(), ema, pad, 0.9, True)
        )


def test_compile_fullgraph_matches_eager():
    eager = norm_ext.nn.PowerNorm(8, warmup_iters=2, group_num=2)
    compiled_module = copy.deepcopy(eager)
    compiled = torch.compile(compiled_module, fullgraph=True)
    pad_mask = _mask(2, 5, [5, 3])
    for x, grad in _steps(4, (2, 5, 8)):
        xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
        ye, yc = eager(xe, pad_mask), compiled(xc, pad_mask)
        torch.testing.assert_close(yc, ye)
        ye.backward(grad)
        yc.backward(grad)
        torch.testing.assert_close(xc.grad, xe.grad)
    for name in ("running_phi", "ema_gz", "iters"):
        torch.testing.assert_close(getattr(compiled_module, name), getattr(eager, name))
    torch.testing.assert_close(compiled_module.weight.grad, eager.weight.grad)


def test_bad_input():
    with pytest.raises(ValueError, match="group_num"):
        norm_ext.nn.PowerNorm(6, group_num=4)
    with pytest.raises(ValueError, match="alpha_fwd"):
        norm_ext.nn.PowerNorm(6, alpha_fwd=1.5)
    with pytest.raises(ValueError, match="eps"):
        norm_ext.nn.PowerNorm(6, eps=-1.0)
    module = norm_ext.nn.PowerNorm(6)
    with pytest.raises(ValueError, match="expected input of shape"):
        module(torch.randn(2, 6))
    with pytest.raises(ValueError, match="pad_mask must have shape"):
        module(torch.randn(2, 3, 6), torch.zeros(3, 2, dtype=torch.bool))
    with pytest.raises(TypeError, match="pad_mask must be bool"):
        module(torch.randn(2, 3, 6), torch.zeros(2, 3))
    with pytest.raises(TypeError, match="scale must be"):
        torch.ops.norm_ext.power_norm(
            torch.randn(2, 3, 6), torch.ones(6, dtype=torch.float64), None, None, torch.zeros(6), None, 0.9
        )
    with pytest.raises(ValueError, match="ema_gz must have shape"):
        torch.ops.norm_ext.power_norm(torch.randn(2, 3, 6), torch.ones(6), None, None, torch.zeros(5), None, 0.9)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _distributed_worker(rank, world_size, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)
        x = torch.randn(4, 5, 6) * 2
        pad_mask = _mask(4, 5, [5, 2, 4, 1]).reshape(world_size, 4 // world_size, 5)
        x = x.reshape(world_size, 4 // world_size, 5, 6)
        module = norm_ext.nn.PowerNorm(6, warmup_iters=2)
        compiled = norm_ext.nn.PowerNorm(6, warmup_iters=2)
        module(x[rank], pad_mask[rank])
        torch.compile(compiled, fullgraph=True)(x[rank], pad_mask[rank])
        results[rank] = module.running_phi.clone(), compiled.running_phi.clone()
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_use_count_weighted_statistics_eager_and_compiled():
    world_size = 2
    results = mp.Manager().dict()
    mp.spawn(_distributed_worker, args=(world_size, _free_port(), results), nprocs=world_size)
    torch.manual_seed(0)
    x = torch.randn(4, 5, 6) * 2
    pad_mask = _mask(4, 5, [5, 2, 4, 1])
    scaled = reference.group_scaling(x, 1, 1e-5)[~pad_mask]
    expected = (scaled * scaled).mean(dim=0)
    for rank in range(world_size):
        eager, compiled = results[rank]
        torch.testing.assert_close(eager.double(), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(compiled.double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", GPU_DEVICES)
def test_stats_on_large_input(device):
    # 4800 tokens: the GPU reduction's 64-token blocks, and padding in most of them.
    x = torch.randn(16, 300, 96)
    pad_mask = torch.rand(16, 300) < 0.3
    for pad in (None, pad_mask):
        sum_sq, count = torch.ops.norm_ext.power_norm_stats(x.to(device), None if pad is None else pad.to(device))
        valid = x.double().reshape(-1, 96) if pad is None else x.double()[~pad]
        torch.testing.assert_close(sum_sq.double().cpu(), (valid * valid).sum(0), atol=1e-3, rtol=1e-5)
        assert float(count) == valid.shape[0]
