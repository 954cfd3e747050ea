"""Costs of the SIMT backend's fibers (docs/simt.md): a block barrier and a thread's start and end at
128, 256 and 1024 threads per block, and a LayerNorm through the cluster path. Needs a build with
NORM_EXT_SIMT=1. Timings are the best of several runs in this process; they depend on the machine's
load, so compare runs side by side.

    python benchmarks/bench_simt_runtime.py
"""

import time

import torch

from norm_ext import simt


def best(fn, repeats=7):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _layer_norm_times(rows, cols):
    x = torch.randn(rows, cols)
    w, b = torch.randn(cols), torch.randn(cols)
    with simt.serving("random", 1):
        y, mean, rstd = torch.ops.norm_ext.layer_norm(x, [cols], w, b, 1e-5)
        dy = torch.randn_like(y)
        forward = best(lambda: torch.ops.norm_ext.layer_norm(x, [cols], w, b, 1e-5), 3)
        backward = best(lambda: torch.ops.norm_ext.layer_norm_backward(dy, x, [cols], mean, rstd, w, b), 3)
    return f"forward {forward * 1e3:.0f} ms, backward {backward * 1e3:.0f} ms"


def main():
    probe = simt._simt
    if probe is None:
        raise SystemExit(simt.unavailable_reason())
    barriers = 200
    with simt.schedule("forward"):
        for threads in (128, 256, 1024):
            empty = best(lambda threads=threads: probe.probe_barriers(threads, 0))
            full = best(lambda threads=threads: probe.probe_barriers(threads, barriers))
            per_barrier = (full - empty) / barriers
            print(
                f"{threads:5d} threads: thread start+end {empty / threads * 1e9:5.0f} ns, "
                f"barrier {per_barrier * 1e6:6.2f} us ({per_barrier / threads * 1e9:4.1f} ns per thread)"
            )
    torch.manual_seed(0)
    for rows in (8, 300):
        print(f"layer_norm fp32 {rows}x40000 (cluster path): {_layer_norm_times(rows, 40000)}")
    print(f"({simt.flavour()} build)")


if __name__ == "__main__":
    main()
