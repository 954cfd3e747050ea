"""SyncBatchNorm and synchronised MaskedBatchNorm1d across gloo worker processes on this machine.

Every check compares against a float64 BatchNorm of the concatenated global batch
(norm_ext.reference). To keep CI fast, one spawn of 4 workers runs all the eager scenarios, and one
spawn of 2 workers runs the torch.compile one; workers use one thread each.
"""

import datetime
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import SIMT, on_simt

from norm_ext import simt
from norm_ext.distributed import count_collectives

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(
        not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo"
    ),
]

CHANNELS = 5
# Seconds a collective may wait in the failing-rank scenario.
PG_TIMEOUT_SHORT = 5
TOL = {
    torch.float32: dict(atol=2e-4, rtol=2e-4),
    torch.float16: dict(atol=2e-2, rtol=2e-2),
    torch.bfloat16: dict(atol=6e-2, rtol=6e-2),
}
PARAM_TOL = {
    torch.float32: dict(atol=2e-3, rtol=1e-4),
    torch.float16: dict(atol=2e-1, rtol=2e-2),
    torch.bfloat16: dict(atol=5e-1, rtol=5e-2),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world_size, port, fn, backend, simt_seed, pg_timeout):
    torch.set_num_threads(1)
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(
        backend,
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=pg_timeout),
    )
    try:
        if simt_seed is None:
            fn(rank, world_size)
        else:
            with simt.serving("random", simt_seed + rank):
                fn(rank, world_size)
    finally:
        dist.destroy_process_group()
    # Reached only when fn passed. torch 2.11's interpreter teardown in a worker that ran
    # torch.compile and gloo collectives aborts now and then ("terminate called without an active
    # exception", after the group is destroyed), so a passing worker exits here, skipping it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _spawn(fn, world_size, timeout=240, backend="gloo", simt_seed=None, pg_timeout=60):
    """Runs fn(rank, world_size) in each of world_size workers; with simt_seed, on the SIMT backend's
    CUDA kernels (random schedules drawn from the seed). pg_timeout bounds each collective."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ctx = mp.start_processes(
        _entry,
        args=(world_size, _free_port(), fn, backend, simt_seed, pg_timeout),
        nprocs=world_size,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for process in ctx.processes:
                process.kill()
            pytest.fail(f"distributed workers did not finish within {timeout}s")


@contextmanager
def _forbid_host_reads():
    names = ("item", "tolist", "__bool__", "__int__", "__float__")
    originals = {name: getattr(torch.Tensor, name) for name in names}

    def forbid(name):
        def hook(self, *args, **kwargs):
            raise AssertionError(f"host read via Tensor.{name} on the hot path")

        return hook

    for name in names:
        setattr(torch.Tensor, name, forbid(name))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def _as_rows(x):
    return x.movedim(1, -1).reshape(-1, x.shape[1])


def _group_sum(t, group):
    t = t.clone()
    dist.all_reduce(t, group=group)
    return t


def _check_sync_parity(
    rank,
    members,
    group,
    sizes,
    spatial,
    dtype=torch.float32,
    fmt=None,
    momentum=0.1,
    offset=1.0,
    scale=2.0,
    steps=2,
    compiled=False,
    var_rtol=1e-4,
    tol=None,
):
    import norm_ext
    from norm_ext import reference as ref

    index = members.index(rank)
    gen = torch.Generator().manual_seed(1234)
    module = norm_ext.nn.SyncBatchNorm(CHANNELS, momentum=momentum, process_group=group)
    with torch.no_grad():
        module.weight.copy_(torch.rand(CHANNELS, generator=gen) + 0.5)
        module.bias.copy_(torch.randn(CHANNELS, generator=gen))
    forward = torch.compile(module, fullgraph=True) if compiled else module
    ref_mean, ref_var = module.running_mean.double(), module.running_var.double()
    for step in range(steps):
        xs = [
            (torch.randn((n, CHANNELS, *s), generator=gen) * scale + offset).to(dtype) for n, s in zip(sizes, spatial)
        ]
        grads = [torch.randn(x.shape, generator=gen).to(dtype) for x in xs]
        x = xs[index].clone()
        if fmt is not None:
            x = x.contiguous(memory_format=fmt)
        x.requires_grad_()
        out = forward(x)
        assert out.dtype == dtype and out.shape == x.shape and out.stride() == x.stride()
        (out * grads[index]).sum().backward()

        rows = torch.cat([_as_rows(t).double() for t in xs]).requires_grad_()
        w64 = module.weight.detach().double().requires_grad_()
        b64 = module.bias.detach().double().requires_grad_()
        factor = 1.0 / (step + 1) if momentum is None else momentum
        expected, ref_mean, ref_var = ref.batch_norm(rows, ref_mean, ref_var, w64, b64, True, factor, 1e-5)
        (expected * torch.cat([_as_rows(g).double() for g in grads])).sum().backward()
        start = sum(t.numel() // CHANNELS for t in xs[:index])
        local = slice(start, start + x.numel() // CHANNELS)
        check_grads = tol is None
        tol = tol or TOL[dtype]
        torch.testing.assert_close(_as_rows(out.detach()).double(), expected[local].detach(), **tol)
        if check_grads:
            torch.testing.assert_close(_as_rows(x.grad).double(), rows.grad[local], **tol)
            # Weight/bias gradients are local, as torch's: their sum over the group is the global one.
            torch.testing.assert_close(_group_sum(module.weight.grad, group).double(), w64.grad, **PARAM_TOL[dtype])
            torch.testing.assert_close(_group_sum(module.bias.grad, group).double(), b64.grad, **PARAM_TOL[dtype])
        torch.testing.assert_close(module.running_mean.double(), ref_mean, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(module.running_var.double(), ref_var, atol=1e-6, rtol=var_rtol)
        module.zero_grad()


def _eager_scenarios(rank, world_size):
    import norm_ext
    from norm_ext import reference as ref

    world = dist.group.WORLD
    ranks = list(range(world_size))
    sq = [(3, 3)] * 4
    # Equal, uneven (batch and spatial size), an empty rank, channels_last, (N, C) input, fp16/bf16.
    _check_sync_parity(rank, ranks, world, [2, 2, 2, 2], sq)
    _check_sync_parity(rank, ranks, world, [1, 3, 2, 4], [(2, 2), (5, 3), (1, 7), (3, 3)], momentum=None)
    _check_sync_parity(rank, ranks, world, [3, 0, 2, 1], sq, fmt=torch.channels_last)
    _check_sync_parity(rank, ranks, world, [4, 5, 0, 3], [()] * 4, steps=1)
    _check_sync_parity(rank, ranks, world, [2, 1, 2, 3], sq, dtype=torch.float16, steps=1)
    _check_sync_parity(rank, ranks, world, [2, 1, 2, 3], sq, dtype=torch.bfloat16, fmt=torch.channels_last, steps=1)
    # Large offset (mean 1e4, std 1e-2) and a variance (1e-8) below eps, merged across ranks.
    # The fp32 mean itself is only good to an ulp of 1e4 (1e-3, a tenth of the std), which bounds the
    # output's accuracy; the variance must still be exact.
    offset_tol = dict(atol=0.1, rtol=0.0)
    _check_sync_parity(
        rank, ranks, world, [2, 2, 1, 3], sq, offset=1e4, scale=1e-2, steps=1, var_rtol=2e-3, tol=offset_tol
    )
    _check_sync_parity(rank, ranks, world, [2, 2, 1, 3], sq, offset=1.0, scale=1e-4, steps=1, var_rtol=1e-3)

    # Subgroups {0, 1} and {2, 3}: each group's statistics are its own members' only.
    groups = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    members = [0, 1] if rank < 2 else [2, 3]
    _check_sync_parity(rank, members, groups[rank // 2], [3, 2], [(2, 3), (4, 1)])

    # Collectives: one all_gather per training forward, one all_reduce per backward, none in eval
    # (after the first forward in a dtype, which also checks that the ranks agree on C and dtype).
    bn = norm_ext.nn.SyncBatchNorm(CHANNELS, momentum=None)
    x = torch.randn(2, CHANNELS, 3, 3, requires_grad=True)
    with count_collectives() as counts:
        bn(x)
    assert counts == {"all_gather_single": 2} or counts == {"all_gather_tensor": 2}, counts
    with count_collectives() as counts, _forbid_host_reads():
        out = bn(x)
        forward_counts = dict(counts)
        out.sum().backward()
    assert sum(forward_counts.values()) == 1 and sum(counts.values()) == 2, counts
    bn.eval()
    with count_collectives() as counts:
        bn(x).sum().backward()
    assert counts == {}, counts

    # Every rank empty: no NaN, running stats unchanged.
    bn.train()
    before = bn.running_mean.clone(), bn.running_var.clone()
    x = torch.randn(0, CHANNELS, 3, 3, requires_grad=True)
    bn(x).sum().backward()
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    assert torch.isfinite(bn.weight.grad).all()

    # One value per channel in the whole group is an error on every rank, as in torch.
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(torch.randn(1 if rank == 0 else 0, CHANNELS))

    # Every rank all padding, the padding non-finite: outputs 0, finite gradients, running stats kept.
    masked = norm_ext.nn.MaskedBatchNorm1d(CHANNELS, process_group=world)
    before = masked.running_mean.clone(), masked.running_var.clone()
    x = torch.full((2, 3, CHANNELS), float("nan"))
    x[0, 0] = float("inf")
    x.requires_grad_()
    out = masked(x, torch.ones(2, 3, dtype=torch.bool))
    out.sum().backward()
    assert torch.equal(out, torch.zeros_like(out))
    assert torch.equal(x.grad, torch.zeros_like(x))
    assert torch.isfinite(masked.weight.grad).all() and torch.isfinite(masked.bias.grad).all()
    assert torch.equal(masked.running_mean, before[0]) and torch.equal(masked.running_var, before[1])

    # Padding-aware BatchNorm synchronised over the world; rank 1 holds only padding, NaN in it.
    gen = torch.Generator().manual_seed(7)
    masked = norm_ext.nn.MaskedBatchNorm1d(CHANNELS, process_group=world)
    running = masked.running_mean.double(), masked.running_var.double()
    for _ in range(2):
        xs = [torch.randn(2, 6, CHANNELS, generator=gen) for _ in ranks]
        masks = [torch.rand(2, 6, generator=gen) < 0.4 for _ in ranks]
        masks[1][:] = True
        grads = [torch.randn(2, 6, CHANNELS, generator=gen) for _ in ranks]
        x = xs[rank].masked_fill(masks[rank].unsqueeze(-1), float("nan")).requires_grad_()
        out = masked(x, masks[rank])
        (out * grads[rank]).sum().backward()
        x64 = torch.cat(xs).double().requires_grad_()
        w64 = masked.weight.detach().double().requires_grad_()
        b64 = masked.bias.detach().double().requires_grad_()
        expected, *running = ref.masked_batch_norm(x64, torch.cat(masks), *running, w64, b64)
        (expected * torch.cat(grads).double()).sum().backward()
        local = slice(2 * rank, 2 * rank + 2)
        torch.testing.assert_close(out.detach().double(), expected[local].detach(), **TOL[torch.float32])
        torch.testing.assert_close(x.grad.double(), x64.grad[local], **TOL[torch.float32])
        torch.testing.assert_close(_group_sum(masked.weight.grad, world).double(), w64.grad, **PARAM_TOL[torch.float32])
        torch.testing.assert_close(masked.running_var.double(), running[1], atol=1e-6, rtol=1e-4)
        masked.zero_grad()


def _disagreeing_ranks_scenario(rank, world_size):
    """Ranks that disagree on the channel count or the dtype each get a ValueError naming every rank's,
    and a rank that fails before the collective leaves the others an error, not a hang."""
    import norm_ext

    cases = [
        ("SyncBatchNorm", lambda: norm_ext.nn.SyncBatchNorm(CHANNELS + rank), torch.float32),
        ("SyncBatchNorm", lambda: norm_ext.nn.SyncBatchNorm(CHANNELS, dtype=torch.float64 if rank else None), None),
        ("PowerNorm", lambda: norm_ext.nn.PowerNorm(CHANNELS + 2 * rank, process_group=dist.group.WORLD), None),
    ]
    for name, make, dtype in cases:
        module = make()
        shape = (4, module.num_features, 3) if name == "SyncBatchNorm" else (2, 3, module.num_features)
        x = torch.randn(shape, dtype=dtype or module.weight.dtype)
        with pytest.raises(ValueError, match=rf"{name}: the ranks of the process group disagree.*rank 0: .*rank 1: "):
            module(x)
    # Rank 1 dies before the collective; rank 0 must get an error within the group's timeout.
    if rank == 1:
        os._exit(0)
    start = time.monotonic()
    with pytest.raises(RuntimeError):
        norm_ext.nn.SyncBatchNorm(CHANNELS)(torch.randn(4, CHANNELS))
    assert time.monotonic() - start < 3 * PG_TIMEOUT_SHORT


def _compiled_scenario(rank, world_size):
    _check_sync_parity(rank, [0, 1], dist.group.WORLD, [2, 3], [(3, 3), (2, 5)], momentum=None, compiled=True)


def _simt_seed(request):
    return simt.seed_for(request.node.nodeid) if on_simt(request) else None


@pytest.mark.parametrize("device", ["cpu", SIMT])
def test_sync_batch_norm_gloo_scenarios(device, request):
    _spawn(_eager_scenarios, 4, simt_seed=_simt_seed(request))


def test_sync_batch_norm_disagreeing_and_failing_ranks():
    _spawn(_disagreeing_ranks_scenario, 2, timeout=120, pg_timeout=PG_TIMEOUT_SHORT)


@pytest.mark.parametrize("device", ["cpu", SIMT])
def test_sync_batch_norm_torch_compile_fullgraph(device, request):
    _spawn(_compiled_scenario, 2, simt_seed=_simt_seed(request))


def _nccl_scenario(rank, world_size):
    # World size 1: SyncBatchNorm is plain BatchNorm, and the exchange itself runs over NCCL.
    import norm_ext
    from norm_ext import distributed
    from norm_ext import reference as ref

    x = torch.randn(4, CHANNELS, 6, 6, device="cuda").contiguous(memory_format=torch.channels_last)
    out = norm_ext.nn.SyncBatchNorm(CHANNELS, device="cuda")(x)
    expected, _, _ = ref.batch_norm(x, training=True)
    torch.testing.assert_close(out.double(), expected, **TOL[torch.float32])
    count, mean, m2 = torch.ops.norm_ext.batch_norm_stats(x)
    group_name = dist.group.WORLD.group_name
    merged = distributed.all_gather_stats(count.double(), mean, m2, group_name, values_per_channel_bound=144)
    torch.testing.assert_close(merged[0], count.double())
    torch.testing.assert_close(merged[1], mean)
    torch.testing.assert_close(merged[2], m2)
    sums = distributed.all_reduce_sums(mean, m2, group_name)
    torch.testing.assert_close(sums[0], mean)


@pytest.mark.skipif(not torch.cuda.is_available() or not dist.is_nccl_available(), reason="needs a CUDA GPU and NCCL")
def test_sync_batch_norm_nccl_world_size_one():
    _spawn(_nccl_scenario, 1, backend="nccl")


@pytest.mark.parametrize("flags", [[], ["--compile", "--channels-last"]], ids=["eager", "compiled"])
def test_ddp_example_runs_on_cpu(flags):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
        "--master-port", str(_free_port()), os.path.join(root, "examples", "train_syncbn.py"), "--steps", "3", *flags,
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "running stats identical on all ranks" in result.stdout
