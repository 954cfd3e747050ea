"""Does every shape class keep an H200 busy? Each class below runs one op forward and backward on the
SIMT backend, whose launch plans read an H200's properties (132 SMs), and its launch log gives, per
launch, the grid, the blocks per SM and, from the checked build, which sees every access: the
fraction of the launched threads that did work (wrote global memory, or read bytes that at most one
other thread read; a value that many threads read, such as a per-channel coefficient, is nobody's
work), the coalescing of the warps' memory requests (the 32-byte sectors their distinct bytes fill
at best, over the sectors they touch) and the busiest block's share of the bytes. Four rules hold
for every launch of every class:

* it has at least one block per SM, unless the class says why less work cannot (``small``);
* more than half of its threads work;
* its requests are coalesced: their bytes fill at least ``MIN_COALESCED`` of the sectors they touch
  (a float32 per lane from 32 rows a channel apart fills 1/8; the row norms' backward, storing its
  dγ/dβ partials one float per lane at a stride of four, filled half);
* no block carries more than ``MAX_BLOCK_SHARE`` times an SM's even share of the launch's bytes (the
  bytes over ``min(blocks, 132)``): such a block is a tail that runs on while the other SMs idle.

Epilogues that fold per-channel partial results (``EPILOGUES``) are exempt: their work is the
channel count, not the input, a few microseconds at most.

``python -m norm_ext.bench.shape_classes --out FILE`` writes the table; tests/test_shape_classes.py
asserts the rules.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch

from .. import functional as F
from .. import simt
from ..nn import PowerNorm

H200_SMS = 132
MIN_WORKING = 0.5
MIN_COALESCED = 0.6
MAX_BLOCK_SHARE = 2.0

# Kernels whose threads each fold one channel's (or one group's) partial results: C threads of work
# whatever the input's size, a few microseconds at most.
EPILOGUES = {
    "merge_partials_kernel": "BatchNorm: one thread per channel folds the channel's split states",
    "sum_partials_kernel": "PowerNorm: one thread per channel sums the token blocks' partials",
    "power_norm_backward_finalize_kernel": "PowerNorm: one thread per channel sums the backward's partials",
    "reduce_param_grad_partials": "row norms: one thread per column folds the backward blocks' dγ/dβ partials",
    "group_norm_param_grad_fold_kernel": "GroupNorm: one thread per channel folds its row splits' dγ/dβ partials",
}


@dataclass(frozen=True)
class ShapeClass:
    id: str
    family: str
    shape: str
    run: Callable[[], None]  # forward and backward on CPU tensors
    small: Optional[str] = None  # why its launches cannot fill the GPU; None: they must


@dataclass(frozen=True)
class LaunchRow:
    shape_class: ShapeClass
    kernel: str
    grid: Sequence[int]
    block: Sequence[int]
    cluster: int
    blocks: int
    working: Optional[float]
    coalesced: Optional[float] = None  # ideal over touched sectors
    bytes: Optional[int] = None
    busiest_block_bytes: Optional[int] = None

    @property
    def blocks_per_sm(self) -> float:
        return self.blocks / H200_SMS

    @property
    def busiest_block_share(self) -> Optional[float]:
        """The busiest block's bytes over an SM's even share of the launch's bytes."""
        if not self.bytes or self.busiest_block_bytes is None:
            return None
        return self.busiest_block_bytes / (self.bytes / min(self.blocks, H200_SMS))

    @property
    def epilogue(self) -> bool:
        return self.kernel in EPILOGUES

    def problems(self) -> List[str]:
        if self.epilogue:
            return []
        found = []
        if self.blocks < H200_SMS and self.shape_class.small is None:
            found.append(f"{self.blocks} blocks for {H200_SMS} SMs")
        if self.working is not None and self.working <= MIN_WORKING:
            found.append(f"{self.working:.0%} of the threads work")
        if self.coalesced is not None and self.coalesced < MIN_COALESCED:
            found.append(f"requests {self.coalesced:.0%} coalesced")
        share = self.busiest_block_share
        if share is not None and share > MAX_BLOCK_SHARE:
            found.append(f"a block carries {share:.1f}x an SM's share")
        return found


def _backward(y: torch.Tensor, *leaves: torch.Tensor) -> None:
    torch.autograd.grad(y, leaves, torch.randn_like(y))


def _leaf(*shape: int, channels_last: bool = False) -> torch.Tensor:
    x = torch.randn(*shape)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    return x.requires_grad_()


def _row_norm(op: str, rows: int, n: int) -> Callable[[], None]:
    def run() -> None:
        x, w, b = _leaf(rows, n), _leaf(n), _leaf(n)
        if op == "layer_norm":
            _backward(F.layer_norm(x, [n], w, b), x, w, b)
        else:
            _backward(F.rms_norm(x, [n], w), x, w)

    return run


def _batch_norm(shape: Sequence[int], channels_last: bool = False) -> Callable[[], None]:
    def run() -> None:
        c = shape[1]
        x, w, b = _leaf(*shape, channels_last=channels_last), _leaf(c), _leaf(c)
        y = F.batch_norm(x, torch.zeros(c), torch.ones(c), w, b, training=True)
        _backward(y, x, w, b)

    return run


def _group_norm(shape: Sequence[int], groups: int, channels_last: bool = False) -> Callable[[], None]:
    def run() -> None:
        c = shape[1]
        x, w, b = _leaf(*shape, channels_last=channels_last), _leaf(c), _leaf(c)
        _backward(F.group_norm(x, groups, w, b), x, w, b)

    return run


def _weight_norm(shape: Sequence[int], dim: Optional[int]) -> Callable[[], None]:
    def run() -> None:
        g_shape = [1] * len(shape) if dim is None else [s if i == dim else 1 for i, s in enumerate(shape)]
        v, g = _leaf(*shape), _leaf(*g_shape)
        _backward(F.weight_norm(v, g, dim), v, g)

    return run


def _power_norm(batch: int, time: int, channels: int) -> Callable[[], None]:
    def run() -> None:
        module = PowerNorm(channels, warmup_iters=0)
        x = _leaf(batch, time, channels)
        _backward(module(x), x, module.weight, module.bias)

    return run


def _classes() -> List[ShapeClass]:
    one_row = "one row: one block, or one cluster of at most 16 blocks, holds it on chip"
    c = []
    for n, rows in ((1, 65536), (24, 8192), (128, 2048), (1024, 264), (4096, 132), (32768, 33)):
        c.append(ShapeClass(f"ln-n{n}", "LayerNorm", f"({rows}, {n})", _row_norm("layer_norm", rows, n)))
    few_rows = "9 rows: a cluster of 4 (8 backward) blocks each holds a row on chip"
    c.append(ShapeClass("ln-n32768-9-rows", "LayerNorm", "(9, 32768)", _row_norm("layer_norm", 9, 32768), few_rows))
    c.append(ShapeClass("ln-n262144", "LayerNorm", "(1, 262144)", _row_norm("layer_norm", 1, 262144), one_row))
    c.append(ShapeClass("rms-n1024", "RMSNorm", "(264, 1024)", _row_norm("rms_norm", 264, 1024)))
    for shape in ((16, 1, 96, 96), (16, 3, 56, 56), (4, 64, 24, 24), (32, 128, 7, 7), (8, 2048, 4, 4)):
        name = "x".join(map(str, shape))
        c.append(ShapeClass(f"bn-nchw-{name}", "BatchNorm", f"{shape} NCHW", _batch_norm(shape)))
    for shape in ((16, 3, 56, 56), (8, 64, 24, 24), (32, 128, 7, 7)):
        name = "x".join(map(str, shape))
        c.append(ShapeClass(f"bn-nhwc-{name}", "BatchNorm", f"{shape} NHWC", _batch_norm(shape, True)))
    for shape in ((147456, 1), (16384, 16), (8192, 33), (128, 2048)):
        name = "x".join(map(str, shape))
        c.append(ShapeClass(f"bn-nc-{name}", "BatchNorm", f"{shape}", _batch_norm(shape)))
    gn = (
        ("gn-small-ng", (2, 64, 64, 64), 32, False),
        ("gn-large-ng", (16, 64, 16, 16), 32, False),
        ("gn-nhwc", (16, 64, 16, 16), 32, True),
        ("gn-small-c", (16, 16, 64, 64), 4, False),
        ("gn-small-c-nhwc", (16, 16, 64, 64), 4, True),
        ("in-nhwc", (16, 64, 16, 16), 64, True),
        ("in-16x16", (8, 64, 16, 16), 64, False),
        ("in-7x7", (32, 128, 7, 7), 128, False),
        ("in-3x3", (64, 128, 3, 3), 128, False),
    )
    for name, shape, groups, channels_last in gn:
        family = "InstanceNorm" if groups == shape[1] else "GroupNorm"
        layout = " NHWC" if channels_last else ""
        c.append(ShapeClass(name, family, f"{shape} G={groups}{layout}", _group_norm(shape, groups, channels_last)))
    for dim in (0, 1, None):
        c.append(ShapeClass(f"wn-dim{dim}", "weight norm", f"(1024, 1024) dim={dim}", _weight_norm((1024, 1024), dim)))
    c.append(ShapeClass("pn-512", "PowerNorm", "(8, 512, 512)", _power_norm(8, 512, 512)))
    c.append(ShapeClass("pn-16", "PowerNorm", "(64, 512, 16)", _power_norm(64, 512, 16)))
    return c


CLASSES = _classes()


def measure(shape_class: ShapeClass) -> List[LaunchRow]:
    """Runs the class on the SIMT backend; one row per launch, in launch order."""
    with simt.serving("forward"), simt.launch_log() as launches:
        shape_class.run()
    return [
        LaunchRow(
            shape_class,
            x.name,
            x.grid,
            x.block,
            x.cluster,
            x.blocks,
            x.working_fraction,
            x.sector_efficiency,
            x.bytes,
            x.busiest_block_bytes,
        )
        for x in launches
    ]


def markdown(rows: Sequence[LaunchRow]) -> str:
    lines = [
        f"| class | shape | kernel | grid | block | cluster | blocks / SM ({H200_SMS} SMs) | threads working | "
        "coalesced | busiest block / SM share | rules |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        working = "" if r.working is None else f"{r.working:.0%}"
        coalesced = "" if r.coalesced is None else f"{r.coalesced:.0%}"
        share = "" if r.busiest_block_share is None else f"{r.busiest_block_share:.2f}"
        problems = r.problems()
        if problems:
            rule = "FAILS: " + "; ".join(problems)
        elif r.epilogue:
            rule = "epilogue: " + EPILOGUES[r.kernel]
        elif r.blocks < H200_SMS:
            rule = "small: " + (r.shape_class.small or "")
        else:
            rule = "fills"
        grid = "x".join(map(str, r.grid))
        block = "x".join(map(str, r.block))
        lines.append(
            f"| {r.shape_class.id} | {r.shape_class.shape} | `{r.kernel}` | {grid} | {block} | {r.cluster} | "
            f"{r.blocks_per_sm:.2f} | {working} | {coalesced} | {share} | {rule} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="write the markdown table here (default: stdout)")
    args = parser.parse_args(argv)
    if not simt.available():
        parser.error(simt.unavailable_reason())
    rows = [row for shape_class in CLASSES for row in measure(shape_class)]
    header = (
        f"Launches per shape class on the SIMT backend ({simt.flavour()} build), planned for an H200 "
        f"({H200_SMS} SMs). Threads working: the fraction of a launch's threads that wrote global "
        "memory or read bytes that at most one other thread read; coalesced: the sectors the warps' "
        "requests need over those they touch; busiest block: its bytes over an SM's even share "
        "(checked build only).\n\n"
    )
    text = header + markdown(rows)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    failing = [r for r in rows if r.problems()]
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
