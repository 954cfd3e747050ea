"""The SIMT backend: norm_ext's CUDA kernels compiled for the host and run on CPU fibers.

Built with ``NORM_EXT_SIMT=1`` (or ``=checked``, see setup.py) as the module ``norm_ext._simt``. Each
CUDA thread of a launch is a fiber; ``__syncthreads``, warp shuffles, shared memory and thread-block
clusters behave as on an H100/H200 (sm_90), whose properties and occupancy the launch plans read, so
the kernels take the paths they would take on that GPU. Inside :func:`serving`, every norm_ext op on
CPU tensors runs the CUDA kernels this way instead of the CPU kernels.

What this proves: the kernels' semantics (results against float64 references), that their barriers,
shuffles and cluster exchanges are used correctly, that their outputs do not depend on the order of
the threads, and, with the checked build, that they are free of shared- and global-memory races and
out-of-bounds or uninitialized accesses. What it does not: speed, real warp scheduling, or memory-model
effects beyond what barriers order.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

try:
    from . import _simt
except ImportError as error:  # built without NORM_EXT_SIMT, or a checked build without its runtime
    _simt = None
    _IMPORT_ERROR: Optional[ImportError] = error
else:
    _IMPORT_ERROR = None

__all__ = [
    "available",
    "unavailable_reason",
    "flavour",
    "schedule",
    "serving",
    "launch_log",
    "Launch",
    "traffic",
    "Traffic",
    "TrafficCounts",
    "SCHEDULES",
    "selftest",
    "selftest_names",
]

SCHEDULES = ("forward", "reverse", "random")


def available() -> bool:
    """Whether this build of norm_ext has the SIMT backend."""
    return _simt is not None


def unavailable_reason() -> str:
    """Why :func:`available` is False ("" when it is True)."""
    if _simt is not None:
        return ""
    message = str(_IMPORT_ERROR)
    if "__asan" in message or "__sanitizer" in message:
        return (
            "the checked SIMT build needs AddressSanitizer's runtime loaded first: run with "
            "LD_PRELOAD=$(clang++-19 -print-file-name=libclang_rt.asan-x86_64.so) "
            "ASAN_OPTIONS=detect_leaks=0"
        )
    if "No module named" in message:
        return "norm_ext was built without the SIMT backend (build with NORM_EXT_SIMT=1)"
    return f"norm_ext._simt failed to load: {message}"


def _module():
    if _simt is None:
        raise RuntimeError(unavailable_reason())
    return _simt


def flavour() -> str:
    """``"plain"``, or ``"checked"``: built with the race, uninitialized-read and AddressSanitizer
    checks."""
    return _module().flavour()


def seed_for(name: str, base: Optional[int] = None) -> int:
    """A schedule seed derived from ``base`` (default: ``NORM_EXT_SIMT_SEED``, else 0) and a name, so
    that a test's schedule is reproducible from the base seed alone."""
    if base is None:
        base = int(os.environ.get("NORM_EXT_SIMT_SEED", "0"))
    digest = hashlib.sha256(f"{base}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


@contextlib.contextmanager
def schedule(name: str = "random", seed: int = 0) -> Iterator[None]:
    """Order the threads of the launches inside the block: ``"forward"`` or ``"reverse"`` (by thread
    index, blocks and clusters likewise), or ``"random"`` (a fresh order at every barrier, drawn from
    ``seed``)."""
    module = _module()
    if name not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {name!r}")
    previous = module.schedule()
    module.set_schedule(name, seed)
    try:
        yield
    finally:
        module.set_schedule(*previous)


@contextlib.contextmanager
def serving(schedule_name: str = "random", seed: int = 0) -> Iterator[None]:
    """Run norm_ext's ops on CPU tensors with the CUDA kernels on the SIMT backend, threads ordered as
    :func:`schedule` says. Kernel faults the backend detects raise ``RuntimeError`` naming the kernel,
    block, thread and address."""
    module = _module()
    was_enabled = module.enabled()
    with schedule(schedule_name, seed):
        module.enable()
        try:
            yield
        finally:
            if not was_enabled:
                module.disable()


def selftest_names() -> List[str]:
    """The checkers' self-test kernels (csrc/simt/selftest.cpp): planted bugs and their fixed twins."""
    return list(_module().selftest_names())


def selftest(name: str) -> None:
    """Run one self-test kernel; raises ``RuntimeError`` with what the checkers report."""
    _module().run_selftest(name)


@dataclass(frozen=True)
class Launch:
    """One kernel launch of the SIMT backend."""

    kernel: str  # demangled, with its template arguments
    grid: Tuple[int, int, int]
    block: Tuple[int, int, int]
    cluster: int
    dynamic_smem: int
    static_smem: int
    threads: int  # threads that ran
    # The checked build counts what follows from every access; the plain build does not see the
    # accesses (None each).
    # Threads that had global memory of their own: wrote a byte, or read a byte that at most one other
    # thread read (values many threads read, such as per-channel coefficients, are nobody's work). The
    # lanes that did the launch's work.
    threads_working: Optional[int]
    # Over the warps' memory requests (the accesses of one warp's lanes at one instruction, the k-th
    # time each lane runs it): the 32-byte sectors touched, and the fewest their distinct bytes fill.
    sectors: Optional[int]
    ideal_sectors: Optional[int]
    # Global bytes accessed, by the launch and by its busiest block.
    bytes: Optional[int]
    busiest_block_bytes: Optional[int]

    @property
    def blocks(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]

    @property
    def threads_per_block(self) -> int:
        return self.block[0] * self.block[1] * self.block[2]

    @property
    def working_fraction(self) -> Optional[float]:
        """The fraction of the launched threads that did work (checked build; None otherwise)."""
        if self.threads_working is None or self.threads == 0:
            return None
        return self.threads_working / self.threads

    @property
    def sector_efficiency(self) -> Optional[float]:
        """Ideal sectors over touched sectors of the warps' requests: 1.0 is fully coalesced, 1/8 a
        warp reading one float32 from each of 32 sectors (checked build; None otherwise)."""
        if self.sectors is None or self.sectors == 0:
            return None
        return self.ideal_sectors / self.sectors

    @property
    def name(self) -> str:
        """The kernel's name without namespace, template arguments or parameters."""
        head = self.kernel.split("(")[0]
        if head.startswith("void "):
            head = head[len("void ") :]
        return head.split("<")[0].split("::")[-1]


@contextlib.contextmanager
def launch_log() -> Iterator[List[Launch]]:
    """Collect the launches made inside the block into the yielded list (filled on exit)."""
    module = _module()
    launches: List[Launch] = []
    module.set_launch_log(True)
    try:
        yield launches
    finally:
        for record in module.take_launch_log():
            access = [None if v < 0 else v for v in record[-1]]
            launches.append(Launch(*record[:-1], *access))
        module.set_launch_log(False)


@dataclass(frozen=True)
class Traffic:
    """Global-memory bytes the kernels accessed in one range (see :func:`traffic`)."""

    read: int  # every access counted
    written: int
    distinct_read: int  # bytes read at least once
    distinct_written: int
    reread: int  # bytes read more than once
    rewritten: int


class TrafficCounts:
    """The counts of one :func:`traffic` window, per byte of global memory; valid until the next window."""

    def __init__(self, module) -> None:
        self._module = module

    def of(self, tensor) -> Traffic:
        """What the kernels read and wrote of ``tensor``'s bytes (contiguous, alive since the window)."""
        if not tensor.is_contiguous():
            raise ValueError("traffic counts are of contiguous tensors")
        return Traffic(*self._module.traffic_of(tensor.data_ptr(), tensor.numel() * tensor.element_size()))

    def total(self) -> Traffic:
        """Of all global memory the kernels touched, temporaries included."""
        return Traffic(*self._module.traffic_total())


@contextlib.contextmanager
def traffic() -> Iterator[TrafficCounts]:
    """Count, per byte, the global memory that the kernels launched inside the block read and write.

    Needs the checked build (``NORM_EXT_SIMT=checked``), whose instrumentation sees every access of
    kernel code; the plain build raises ``RuntimeError``. Counts are by address: memory freed and
    reused inside the block counts for both of its tensors."""
    module = _module()
    module.traffic_start()
    counts = TrafficCounts(module)
    try:
        yield counts
    finally:
        module.traffic_stop()
