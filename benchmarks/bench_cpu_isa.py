"""The CPU kernels on two instruction sets, A/B: each round runs one child process per set
(NORM_EXT_CPU_ISA caps it), alternating, and the table gives per-case medians and the range of the
paired ratios. The ISA is fixed per process, so this is a process-level A/B; alternating rounds
spread the VM's load changes over both sides.

    python benchmarks/bench_cpu_isa.py                      # avx2 vs the best set, 4 rounds
    python benchmarks/bench_cpu_isa.py --a default --rounds 2 --cases bf16
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import subprocess
import sys
import time


def cases():
    import torch

    from norm_ext import functional as F

    out = {}
    for dt, name in ((torch.bfloat16, "bf16"), (torch.float32, "fp32")):
        shapes = ((8192, 4096), (32768, 1024)) if dt == torch.bfloat16 else ((4096, 4096),)
        for m, n in shapes:
            x, w, b = torch.randn(m, n, dtype=dt), torch.randn(n, dtype=dt), torch.randn(n, dtype=dt)
            out[f"layer_norm_{name}_{m}x{n}_fwd"] = lambda x=x, w=w, b=b, n=n: F.layer_norm(x, (n,), w, b)
            out[f"rms_norm_{name}_{m}x{n}_fwd"] = lambda x=x, w=w, n=n: F.rms_norm(x, (n,), w)
            leaves = [t.clone().requires_grad_() for t in (x, w, b)]
            g = torch.randn_like(x)

            def fwd_bwd(leaves=leaves, g=g, n=n):
                F.layer_norm(leaves[0], (n,), leaves[1], leaves[2]).backward(g)
                for t in leaves:
                    t.grad = None

            out[f"layer_norm_{name}_{m}x{n}_fwd+bwd"] = fwd_bwd
        xb, wb = torch.randn(32, 128, 56, 56, dtype=dt), torch.randn(128, dtype=dt)
        for fmt, t in (("nchw", xb), ("nhwc", xb.contiguous(memory_format=torch.channels_last))):
            out[f"batch_norm_{name}_32x128x56x56_{fmt}_fwd"] = lambda t=t, w=wb: F.batch_norm(
                t, None, None, w, w, training=True
            )
        for shape in ((8, 256, 64, 64), (8, 512, 32, 32)):
            xg, wg = torch.randn(*shape, dtype=dt), torch.randn(shape[1], dtype=dt)
            tag = "x".join(map(str, shape))
            for fmt, t in (("nchw", xg), ("nhwc", xg.contiguous(memory_format=torch.channels_last))):
                out[f"group_norm_{name}_{tag}_{fmt}_fwd"] = lambda t=t, w=wg: F.group_norm(t, 32, w, w)
        v, gv = torch.randn(8192, 4096, dtype=dt), torch.rand(8192, 1, dtype=dt)
        out[f"weight_norm_{name}_8192x4096_fwd"] = lambda v=v, gv=gv: F.weight_norm(v, gv, 0)
    return out


def child(selected: str, min_time: float) -> None:
    import torch

    import norm_ext
    from norm_ext.bench.timing import keep_freed_memory

    keep_freed_memory()
    torch.manual_seed(0)
    fields = [norm_ext.cpu_isa()]
    for name, fn in cases().items():
        if selected and not any(s in name for s in selected.split(",")):
            continue
        # A case's first calls grow the heap (glibc then keeps it), page by page: warm up for a while.
        warm, warm_until = 0, time.perf_counter() + min_time
        while warm < 3 or time.perf_counter() < warm_until:
            fn()
            warm += 1
        times, deadline = [], time.perf_counter() + min_time
        while len(times) < 5 or time.perf_counter() < deadline:
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        fields.append(f"{name}={statistics.median(times) * 1e3:.3f}")
    print(" ".join(fields), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", default="avx2", help="the capped side: avx2 or default")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--cases", default="", help="comma-separated substrings of case names")
    parser.add_argument("--min-time", type=float, default=0.6, help="seconds per case and process")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.cases, args.min_time)
        return
    times = collections.defaultdict(lambda: collections.defaultdict(list))
    isas = {}
    for _ in range(args.rounds):
        for side, cap in (("a", args.a), ("b", "")):
            cmd = [sys.executable, __file__, "--child", "--cases", args.cases, "--min-time", str(args.min_time)]
            line = subprocess.run(
                cmd, env=dict(os.environ, NORM_EXT_CPU_ISA=cap), capture_output=True, text=True, check=True
            ).stdout.split()
            isas[side] = line[0]
            for field in line[1:]:
                name, ms = field.split("=")
                times[name][side].append(float(ms))
    print(f"| case | {isas['a']} ms | {isas['b']} ms | {isas['a']} / {isas['b']} (median) | paired ratios |")
    print("|---|---|---|---|---|")
    for name, sides in times.items():
        a, b = sides["a"], sides["b"]
        paired = sorted(x / y for x, y in zip(a, b))
        ma, mb = statistics.median(a), statistics.median(b)
        print(f"| {name} | {ma:.3f} | {mb:.3f} | {ma / mb:.2f}x | {paired[0]:.2f}-{paired[-1]:.2f} |")


if __name__ == "__main__":
    main()
