"""SyncBatchNorm benchmark: norm_ext vs torch, with collectives and host syncs per training step.

    python benchmarks/bench_syncbn.py                  # spawns 2 local workers (gloo on CPU, NCCL on GPUs)
    python benchmarks/bench_syncbn.py --world-size 4 --steps 20

Each case times forward + backward of one SyncBatchNorm layer on ResNet-like NCHW and NHWC
activations and on (T*B, C) sequence activations, and reports per step: time (median over ranks'
max), the collectives launched (counted by wrapping torch.distributed and its functional
collectives), and host syncs (CUDA: torch.cuda.set_sync_debug_mode warnings; CPU: reads of tensor
values through .item() / bool() / int() / float() / .tolist()). torch.nn.SyncBatchNorm only accepts
CUDA tensors, so on CPU its column says so; torch.nn.BatchNorm2d (not synchronised) is the
single-device baseline. Single-device BatchNorm cases live in ``python -m norm_ext.bench``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import statistics
import sys
import time
import warnings
from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import norm_ext  # noqa: E402
from norm_ext.distributed import count_collectives  # noqa: E402

CPU_CASES = [
    ("NCHW resnet 16x64x28x28", (16, 64, 28, 28), torch.contiguous_format),
    ("NHWC resnet 16x64x28x28", (16, 64, 28, 28), torch.channels_last),
    ("NHWC C=65 8x65x32x32", (8, 65, 32, 32), torch.channels_last),
    ("seq (T*B)xC 4096x512", (4096, 512), None),
]
CUDA_CASES = [
    ("NCHW resnet 32x256x56x56", (32, 256, 56, 56), torch.contiguous_format),
    ("NHWC resnet 32x256x56x56", (32, 256, 56, 56), torch.channels_last),
    ("NHWC C=65 32x65x112x112", (32, 65, 112, 112), torch.channels_last),
    ("seq (T*B)xC 65536x1024", (65536, 1024), None),
]


@contextmanager
def count_host_syncs(counts: dict, device: torch.device):
    if device.type == "cuda":
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield counts
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts["host_syncs"] = sum("synchroniz" in str(w.message) for w in caught)
        return
    names = ("item", "tolist", "__bool__", "__int__", "__float__")
    originals = {name: getattr(torch.Tensor, name) for name in names}
    for name in names:

        def counted(self, *args, _original=originals[name], **kwargs):
            counts["host_syncs"] = counts.get("host_syncs", 0) + 1
            return _original(self, *args, **kwargs)

        setattr(torch.Tensor, name, counted)
    try:
        yield counts
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def make_input(shape, memory_format, device):
    x = torch.randn(shape, device=device)
    if memory_format is not None:
        x = x.contiguous(memory_format=memory_format)
    return x.requires_grad_()


def step(module, x, grad):
    out = module(x)
    out.backward(grad)


def time_steps(module, x, grad, steps, device):
    for _ in range(3):
        step(module, x, grad)
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        dist.barrier()
        start = time.perf_counter()
        step(module, x, grad)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    # The slowest rank sets the pace of a synchronised layer.
    median = torch.tensor([statistics.median(times)], dtype=torch.float64, device=device)
    dist.all_reduce(median, op=dist.ReduceOp.MAX)
    return float(median) * 1e3


def per_step_counts(module, x, grad, device):
    syncs = {}
    with count_collectives() as collectives, count_host_syncs(syncs, device):
        step(module, x, grad)
    return sum(collectives.values()), syncs.get("host_syncs", 0)


def worker(rank, world_size, port, args):
    torch.set_num_threads(max(1, args.threads))
    use_cuda = torch.cuda.is_available() and torch.cuda.device_count() >= world_size and not args.cpu
    device = torch.device("cuda", rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if use_cuda else "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=120),
        **({"device_id": device} if use_cuda else {}),
    )
    cases = CUDA_CASES if use_cuda else CPU_CASES
    rows = []
    refusal = ""
    for name, shape, memory_format in cases:
        channels = shape[1]
        x = make_input(shape, memory_format, device)
        grad = torch.randn_like(x)
        ours = norm_ext.nn.SyncBatchNorm(channels, device=device)
        ours_ms = time_steps(ours, x, grad, args.steps, device)
        ours_coll, ours_syncs = per_step_counts(ours, x, grad, device)
        if use_cuda:
            theirs = torch.nn.SyncBatchNorm(channels, device=device)
            theirs_ms = f"{time_steps(theirs, x, grad, args.steps, device):8.2f}"
            coll, syncs = per_step_counts(theirs, x, grad, device)
            theirs_counts = f"{coll} / {syncs}"
        else:
            try:
                torch.nn.SyncBatchNorm(channels)(x)
                theirs_ms, theirs_counts = "ran on CPU?", "-"
            except (ValueError, RuntimeError) as error:
                refusal = str(error).splitlines()[0]
                theirs_ms, theirs_counts = "refuses CPU", "-"
        local_bn = torch.nn.BatchNorm1d(channels) if len(shape) == 2 else torch.nn.BatchNorm2d(channels)
        local_ms = time_steps(local_bn.to(device), x, grad, args.steps, device)
        rows.append((name, ours_ms, f"{ours_coll} / {ours_syncs}", theirs_ms, theirs_counts, local_ms))
    if rank == 0:
        print(
            f"SyncBatchNorm forward+backward, {world_size} ranks, backend {dist.get_backend()}, device {device.type}"
            f" ({torch.__version__}); ms per step = median over steps of the slowest rank"
        )
        if not use_cuda:
            print(f"torch.nn.SyncBatchNorm refuses CPU tensors: {refusal!r}")
        header = (
            f"{'case':28s} {'norm_ext ms':>11s} {'coll/syncs':>10s} {'torch Sync ms':>13s} {'coll/syncs':>10s}"
            f" {'torch BN (local) ms':>19s}"
        )
        print(header)
        for name, ours_ms, ours_counts, theirs_ms, theirs_counts, local_ms in rows:
            theirs = theirs_ms if isinstance(theirs_ms, str) else f"{theirs_ms:.2f}"
            print(f"{name:28s} {ours_ms:11.2f} {ours_counts:>10s} {theirs:>13s} {theirs_counts:>10s} {local_ms:19.2f}")
        print("coll/syncs: collectives launched / host syncs in one training step (forward + backward)")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per worker")
    parser.add_argument("--cpu", action="store_true", help="use gloo on CPU even where GPUs exist")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(worker, args=(args.world_size, port, args), nprocs=args.world_size, start_method="spawn")


if __name__ == "__main__":
    main()
