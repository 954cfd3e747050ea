"""Timers. Both return a :class:`Timing`: the median time of one call and the spread around it.

GPU: CUDA events around each call, with the L2 cache flushed (a buffer twice its size overwritten)
before every rep so each call reads its inputs from HBM, after a warm-up. Small problems are
captured in a CUDA graph and replayed, which removes the CPU launch overhead that would otherwise
dominate; the graph is skipped if capture fails.

CPU: wall-clock per call (``time.perf_counter``) after a warm-up, ``torch.get_num_threads()``
threads (reported with the results). There is no cache flush: most cases of the default sweeps move
more than the last-level cache, but the GroupNorm ones (8-32 MB of input) may find part of their
input still cached from the previous call, as they would after the layer that produced it; kernels
that write with non-temporal stores evict less of it. The copy baseline and the providers of one case are
timed round-robin (one call each per round), so that a change in the machine's load during the run
reaches all of them alike and the ratios stay meaningful.
"""

from __future__ import annotations

import ctypes
import statistics
import time
from dataclasses import dataclass
from typing import Callable, List, Sequence

import torch

# Problems that move fewer bytes than this are timed through a CUDA graph.
GRAPH_BYTES = 32 << 20


@dataclass
class Timing:
    median_ms: float
    spread_ms: float  # interquartile range (p75 - p25)
    reps: int
    graph: bool = False


def _summarize(samples_ms: List[float], graph: bool = False) -> Timing:
    samples_ms = sorted(samples_ms)
    if len(samples_ms) >= 4:
        q = statistics.quantiles(samples_ms, n=4)
        spread = q[2] - q[0]
    else:
        spread = samples_ms[-1] - samples_ms[0]
    return Timing(statistics.median(samples_ms), spread, len(samples_ms), graph)


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory() -> None:
    """Make glibc keep and reuse freed memory for the rest of the process (``--cpu-memory reused``).

    By default glibc maps every block over its mmap threshold afresh and unmaps it on free, so each
    call's large outputs are new pages that the kernel zeroes on first touch: on a small VM that
    costs several times the kernel itself, the same for every provider. With no mmap'd blocks and
    no trimming, the allocator recycles the heap, and the timings are those of the kernels (the
    effect of ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...`` in the environment).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError) as e:
        raise RuntimeError("--cpu-memory reused needs glibc's mallopt, which this process does not have") from e
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if not (mallopt(_M_MMAP_MAX, 0) and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)):
        raise RuntimeError("--cpu-memory reused: glibc's mallopt refused the settings")


def time_cpu(fn: Callable[[], object], *, min_time_s: float, max_reps: int, warmup: int) -> Timing:
    for _ in range(warmup):
        fn()
    samples: List[float] = []
    deadline = time.perf_counter() + min_time_s
    while len(samples) < max_reps and (len(samples) < 3 or time.perf_counter() < deadline):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
        if max_reps <= len(samples):
            break
    return _summarize(samples)


class _L2Flusher:
    def __init__(self, device: torch.device) -> None:
        l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 << 20) or (50 << 20)
        self.buffer = torch.empty(2 * l2, dtype=torch.uint8, device=device)

    def __call__(self) -> None:
        self.buffer.fill_(0)


def _capture_graph(fn: Callable[[], object]):
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def time_cuda(
    fn: Callable[[], object], *, bytes_moved: int, min_time_s: float, max_reps: int, warmup: int, use_graph: bool = True
) -> Timing:
    device = torch.device("cuda", torch.cuda.current_device())
    flush = _L2Flusher(device)
    call, graph = fn, False
    if use_graph and bytes_moved < GRAPH_BYTES:
        try:
            captured = _capture_graph(fn)
            call, graph = captured.replay, True
        except Exception:  # autograd or a library may not be capturable; time it eagerly then
            torch.cuda.synchronize()
    for _ in range(warmup):
        call()
    torch.cuda.synchronize()
    samples: List[float] = []
    deadline = time.perf_counter() + min_time_s
    while len(samples) < max_reps and (len(samples) < 5 or time.perf_counter() < deadline):
        batch = min(16, max_reps - len(samples))
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(batch)]
        for start, end in events:
            flush()
            start.record()
            call()
            end.record()
        torch.cuda.synchronize()
        samples += [start.elapsed_time(end) for start, end in events]
    return _summarize(samples, graph)


def time_cpu_interleaved(
    fns: Sequence[Callable[[], object]], *, min_time_s: float, max_reps: int, warmup: int
) -> List[Timing]:
    for fn in fns:
        for _ in range(warmup):
            fn()
    samples: List[List[float]] = [[] for _ in fns]
    deadline = time.perf_counter() + min_time_s * len(fns)
    while True:
        for fn, own in zip(fns, samples):
            start = time.perf_counter()
            fn()
            own.append((time.perf_counter() - start) * 1e3)
        done = len(samples[0])
        if done >= max_reps or (done >= 3 and time.perf_counter() >= deadline):
            return [_summarize(own) for own in samples]


def time_calls(fns: Sequence[Callable[[], object]], device: str, **kwargs) -> List[Timing]:
    """Time several functions of one case: one after another on the GPU (CUDA events are immune to
    host load), round-robin on the CPU."""
    if device == "cuda":
        return [time_cuda(fn, **kwargs) for fn in fns]
    kwargs.pop("bytes_moved", None)
    kwargs.pop("use_graph", None)
    return time_cpu_interleaved(fns, **kwargs)
