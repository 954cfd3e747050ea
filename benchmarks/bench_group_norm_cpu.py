"""GroupNorm CPU benchmark: norm_ext vs torch, forward and forward + backward, with and without SiLU.

    python benchmarks/bench_group_norm_cpu.py                 # 2 threads, 15 rounds
    python benchmarks/bench_group_norm_cpu.py --threads 1 --rounds 31

torch's side is F.group_norm followed by F.silu (when fused); ours is norm_ext.group_norm with
activation="silu". The two are timed alternately within every round, and the medians over rounds
are reported, so that load from other processes on a shared machine hits both sides alike.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

import norm_ext

SHAPES = [(4, 320, 64, 64), (8, 128, 32, 32)]
GROUPS = 32


def make_step(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, backward: bool) -> Callable[[], None]:
    grad = torch.randn_like(x)

    def step() -> None:
        if backward:
            x.grad = None
            fn(x).backward(grad)
        else:
            with torch.no_grad():
                fn(x)

    return step


def time_once(step: Callable[[], None], iters: int) -> float:
    start = time.perf_counter()
    for _ in range(iters):
        step()
    return (time.perf_counter() - start) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"{'case':<52} {'torch ms':>9} {'ours ms':>9} {'ratio':>6}")
    cases = itertools.product(SHAPES, ["nchw", "nhwc"], [torch.float32, torch.bfloat16], [False, True], [False, True])
    for shape, layout, dtype, silu, backward in cases:
        c = shape[1]
        x = torch.randn(shape, dtype=dtype)
        if layout == "nhwc":
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_(backward)
        w = torch.randn(c, dtype=dtype, requires_grad=backward)
        b = torch.randn(c, dtype=dtype, requires_grad=backward)

        def ref(t: torch.Tensor, w: torch.Tensor = w, b: torch.Tensor = b, silu: bool = silu) -> torch.Tensor:
            y = F.group_norm(t, GROUPS, w, b, 1e-5)
            return F.silu(y) if silu else y

        def ours(t: torch.Tensor, w: torch.Tensor = w, b: torch.Tensor = b, silu: bool = silu) -> torch.Tensor:
            return norm_ext.group_norm(t, GROUPS, w, b, 1e-5, activation="silu" if silu else None)

        steps = [make_step(ref, x, backward), make_step(ours, x, backward)]
        for step in steps:
            step()
        times: list[list[float]] = [[], []]
        for _ in range(args.rounds):
            for i, step in enumerate(steps):
                times[i].append(time_once(step, args.iters))
        t_ref, t_ours = (statistics.median(t) * 1e3 for t in times)
        name = "x".join(map(str, shape)) + f" {layout} {str(dtype)[6:]} {'silu' if silu else 'none'}"
        name += " fwd+bwd" if backward else " fwd"
        print(f"{name:<52} {t_ref:9.3f} {t_ours:9.3f} {t_ref / t_ours:6.2f}x", flush=True)


if __name__ == "__main__":
    main()
