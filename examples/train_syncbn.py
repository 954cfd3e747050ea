"""Train a small CNN with DistributedDataParallel and norm_ext's SyncBatchNorm.

    torchrun --nproc-per-node 2 examples/train_syncbn.py --steps 20

Runs on CPU with gloo, or on GPUs with NCCL (one GPU per process). Without torchrun it trains in a
single process, where SyncBatchNorm is plain BatchNorm. The data is synthetic: labels come from a
fixed random linear "teacher" on 4x4-pooled images, so the loss visibly decreases within a few dozen steps.
"""

from __future__ import annotations

import argparse
import inspect
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import norm_ext

NUM_CLASSES = 10


def make_model() -> nn.Module:
    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    return nn.Sequential(
        block(3, 16),
        block(16, 32),
        nn.MaxPool2d(2),
        block(32, 32),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, NUM_CLASSES),
    )


def synthetic_batch(teacher: torch.Tensor, batch_size: int, seed: int, device: torch.device):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, 3, 16, 16, generator=gen)
    labels = (F.avg_pool2d(images, 4).flatten(1) @ teacher).argmax(1)
    return images.to(device), labels.to(device)


def running_stats_match_rank0(stats: torch.Tensor, rank: int, world_size: int) -> bool:
    """On rank 0, whether every rank's running statistics match its own (other ranks send theirs).

    Point to point on purpose, as the last exchange before exit. gloo runs collectives on worker
    threads, and the worker drops a finished collective's tensors after the caller's wait() has
    returned (a barrier only defers that, holding weak references to the work before it). Landing
    while Python finalises, that drop needs the GIL, the interpreter ends the thread inside a
    noexcept destructor, and the process aborts: "terminate called without an active exception", in
    about 1 run of 4 here with an all_reduce last, 1 of 10 to 40 with a barrier after it. gloo's send
    and recv work on the caller's thread, which also drops their tensors: no abort in 60 runs.
    """
    if rank != 0:
        dist.send(stats, dst=0)
        return True
    other = torch.empty_like(stats)
    match = True
    for src in range(1, world_size):
        dist.recv(other, src=src)
        match = match and torch.allclose(other, stats)
    return match


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=32, help="per process")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (fullgraph)")
    args = parser.parse_args()

    distributed = "RANK" in os.environ
    use_cuda = torch.cuda.is_available()
    if distributed:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if distributed else 0
    world_size = dist.get_world_size() if distributed else 1
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)

    torch.manual_seed(0)  # same initial weights on every rank
    teacher = torch.randn(3 * 4 * 4, NUM_CLASSES)
    model = norm_ext.convert_sync_batchnorm(make_model()).to(device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    if args.compile:
        # The module under DDP is compiled, not DDP: Dynamo cannot trace DDP's forward (its logger)
        # into one graph, while SyncBatchNorm's collectives trace into this one.
        model.compile(fullgraph=True)
    if distributed:
        # SyncBatchNorm keeps the running stats identical on every rank, so DDP need not broadcast them
        # before every forward (the option's name changed in newer torch).
        no_buffer_sync = (
            {"forward_sync_buffers": False}
            if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
            else {"broadcast_buffers": False}
        )
        model = DistributedDataParallel(model, device_ids=[local_rank] if use_cuda else None, **no_buffer_sync)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    start = time.perf_counter()
    for step in range(args.steps):
        images, labels = synthetic_batch(teacher, args.batch_size, seed=step * world_size + rank, device=device)
        loss = F.cross_entropy(model(images.contiguous(memory_format=memory_format)), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if rank == 0 and (step % 10 == 0 or step == args.steps - 1):
            print(f"step {step:4d}  loss {loss.item():.4f}", flush=True)
    elapsed = time.perf_counter() - start

    bn = next(m for m in model.modules() if isinstance(m, norm_ext.nn.SyncBatchNorm))
    if distributed:
        assert running_stats_match_rank0(bn.running_var, rank, world_size), "running stats differ across ranks"
    if rank == 0:
        backend = dist.get_backend() if distributed else "none"
        print(
            f"done: {args.steps} steps, {world_size} process(es), backend {backend}, device {device.type}, "
            f"{elapsed / max(args.steps, 1) * 1e3:.1f} ms/step; running stats identical on all ranks",
            flush=True,
        )
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
