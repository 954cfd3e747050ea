"""BatchNorm CPU throughput against torch, interleaved run by run (the machine is shared and noisy).

Usage: python benchmarks/bench_batchnorm_cpu.py [--threads 2] [--reps 15]
Prints, per case, the median time of torch and norm_ext and their ratio (torch / ours; > 1 means faster).
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import norm_ext

SHAPES = [
    ("32x64x56x56", (32, 64, 56, 56)),
    ("32x256x14x14", (32, 256, 14, 14)),
    ("(T*B)xC 8192x512", (8192, 512)),
]


def make_case(fn, shape, dtype, channels_last, backward):
    x = torch.randn(shape, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    c = shape[1]
    w = torch.randn(c, dtype=dtype)
    b = torch.randn(c, dtype=dtype)
    rm, rv = torch.zeros(c, dtype=dtype), torch.ones(c, dtype=dtype)
    if backward:
        x.requires_grad_(True)
        w.requires_grad_(True)
        b.requires_grad_(True)
        grad = torch.randn_like(x)

    def run():
        y = fn(x, rm, rv, w, b, training=True, momentum=0.1, eps=1e-5)
        if backward:
            torch.autograd.backward(y, grad)
            x.grad = w.grad = b.grad = None

    return run


def timed(run, inner):
    start = time.perf_counter()
    for _ in range(inner):
        run()
    return (time.perf_counter() - start) / inner


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--inner", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads} reps={args.reps}; ratio = torch / norm_ext (> 1: norm_ext faster)")
    for name, shape in SHAPES:
        layouts = [False] if len(shape) == 2 else [False, True]
        for dtype in (torch.float32, torch.bfloat16):
            for channels_last in layouts:
                for backward in (False, True):
                    ours = make_case(norm_ext.functional.batch_norm, shape, dtype, channels_last, backward)
                    ref = make_case(F.batch_norm, shape, dtype, channels_last, backward)
                    ours()
                    ref()
                    t_ours, t_ref = [], []
                    for _ in range(args.reps):
                        t_ref.append(timed(ref, args.inner))
                        t_ours.append(timed(ours, args.inner))
                    m_ours, m_ref = statistics.median(t_ours), statistics.median(t_ref)
                    label = (
                        f"{name:18s} {str(dtype)[6:]:8s} {'NHWC' if channels_last else 'NCHW'} "
                        f"{'fwd+bwd' if backward else 'fwd':7s}"
                    )
                    times = f"torch {m_ref * 1e3:8.2f} ms  ours {m_ours * 1e3:8.2f} ms"
                    print(f"{label} {times}  ratio {m_ref / m_ours:5.2f}")


if __name__ == "__main__":
    main()
