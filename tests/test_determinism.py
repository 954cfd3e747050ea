"""Deterministic reductions: the GPU kernels combine partial sums in an order fixed by indices only (the
row norms' dgamma/dbeta partial rows, the batch-norm and GroupNorm partial states, PowerNorm's token
blocks, weight norm's block sums), so their results are bitwise the same whatever order the threads
run in. On the SIMT backend each case runs under the forward, reverse and two seeded-random schedules;
on a GPU, three times."""

import pytest
import torch
from conftest import GPU_DEVICES, on_simt

from norm_ext import simt

SCHEDULES = [("forward", 0), ("reverse", 0), ("random", 11), ("random", 12)]


def _row_norm(kind, rows, cols):
    # cols per path (fp32, aligned): 64 warp, 1024 block, 40000 cluster, 300000 stream.
    def case(device):
        x = torch.randn(rows, cols, device=device) * 2 + 0.5
        w, b = torch.randn(cols, device=device), torch.randn(cols, device=device)
        dy = torch.randn(rows, cols, device=device)

        def run():
            if kind == "layer":
                y, mean, rstd = torch.ops.norm_ext.layer_norm(x, [cols], w, b, 1e-5)
                return (y, mean, rstd, *torch.ops.norm_ext.layer_norm_backward(dy, x, [cols], mean, rstd, w, b))
            y, rstd = torch.ops.norm_ext.rms_norm(x, [cols], w, 1e-5)
            return (y, rstd, *torch.ops.norm_ext.rms_norm_backward(dy, x, [cols], rstd, w))

        return run

    return case


def _batch_norm(channels_last):
    def case(device):
        x = torch.randn(4, 24, 9, 9, device=device) * 3 + 1
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        dy = torch.randn_like(x)

        def run():
            count, mean, m2 = torch.ops.norm_ext.batch_norm_stats(x)
            invstd = (m2 / count + 1e-5).rsqrt()
            return (mean, m2, *torch.ops.norm_ext.batch_norm_backward_reduce(dy, x, mean, invstd))

        return run

    return case


def _group_norm(channels_last):
    def case(device):
        x = torch.randn(2, 32, 24, 24, device=device) * 2 + 1
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        w, b = torch.randn(32, device=device), torch.randn(32, device=device)
        dy = torch.randn_like(x)

        def run():
            y, mean, rstd = torch.ops.norm_ext.group_norm(x, 4, w, b, 1e-5, "silu")
            return (y, mean, rstd, *torch.ops.norm_ext.group_norm_backward(dy, x, 4, mean, rstd, w, b, "silu"))

        return run

    return case


def _power_norm(device):
    x = torch.randn(8, 150, 40, device=device)
    pad = torch.rand(8, 150, device=device) < 0.3
    scale = torch.rand(40, device=device) + 0.5
    w, ema = torch.randn(40, device=device), torch.randn(40, device=device)
    dy = torch.randn_like(x)

    def run():
        ema_gz = ema.clone()
        stats = torch.ops.norm_ext.power_norm_stats(x, pad)
        grads = torch.ops.norm_ext.power_norm_backward(dy, x, scale, w, ema_gz, pad, 0.1, True)
        return (*stats, *grads, ema_gz)

    return run


def _weight_norm(device):
    v = torch.randn(6, 300, 7, device=device)
    g = torch.rand(1, 300, 1, device=device) + 0.5
    grad_w = torch.randn_like(v)

    def run():
        w, norm = torch.ops.norm_ext.weight_norm(v, g, 1)
        return (w, norm, *torch.ops.norm_ext.weight_norm_backward(grad_w, v, g, norm, 1))

    return run


CASES = {
    "layer_norm-warp": _row_norm("layer", 300, 64),
    "layer_norm-block": _row_norm("layer", 40, 1024),
    "layer_norm-cluster": _row_norm("layer", 6, 40000),
    "layer_norm-stream": _row_norm("layer", 2, 300000),
    "rms_norm-block": _row_norm("rms", 40, 1024),
    "rms_norm-cluster": _row_norm("rms", 6, 40000),
    "batch_norm-nchw": _batch_norm(False),
    "batch_norm-nhwc": _batch_norm(True),
    "group_norm-nchw": _group_norm(False),
    "group_norm-nhwc": _group_norm(True),
    "power_norm": _power_norm,
    "weight_norm": _weight_norm,
}


@pytest.mark.parametrize("device", GPU_DEVICES)
@pytest.mark.parametrize("name", list(CASES))
def test_bitwise_equal_across_thread_orders(name, device, request):
    run = CASES[name](device)
    if on_simt(request):
        results = []
        for schedule in SCHEDULES:
            with simt.schedule(*schedule):
                results.append(run())
    else:
        results = [run() for _ in range(3)]
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b), name
