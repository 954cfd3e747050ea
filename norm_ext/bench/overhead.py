"""Host time per call at tiny shapes, where the kernels cost next to nothing and what a call spends in
Python, the dispatcher and autograd is the whole cost: ``python -m norm_ext.bench --overhead``.

Each case is a torch module and its norm_ext twin with the same state (in training mode unless the
case says eval), called as a user calls them, in three modes: the forward under ``torch.no_grad()``,
the forward with parameters that require grad, and the forward plus ``backward()``. Both run in one
process, interleaved round by round, and each reports the best round's mean, so that the two see the
same machine. On CUDA the loop does not
synchronize between calls: the tensors are tiny, so the GPU waits on the host and the time is host
time per call.

A third column calls torch's own op through ``torch.ops.aten`` (the module's forward replaced by that
one call): the route every custom op takes from Python, against the generated binding that
``torch.nn.functional`` uses. Its cost over torch's column is the floor a norm_ext op starts from.
"""

from __future__ import annotations

import csv
import datetime
import time
from dataclasses import dataclass
from typing import Callable, Dict, List

import torch

import norm_ext

from .harness import device_name, norm_ext_commit

MODES = ("no_grad", "grad", "fwd+bwd")


@dataclass
class Case:
    name: str
    shape: tuple
    torch_module: Callable[[], torch.nn.Module]
    ours_module: Callable[[], torch.nn.Module]
    aten_module: Callable[[], torch.nn.Module]
    training: bool = True

    @property
    def label(self) -> str:
        return f"{self.name} {'x'.join(map(str, self.shape))}" + ("" if self.training else " eval")


class _AtenLayerNorm(torch.nn.LayerNorm):
    def forward(self, x):
        return torch.ops.aten.layer_norm.default(x, self.normalized_shape, self.weight, self.bias, self.eps)


class _AtenRMSNorm(torch.nn.RMSNorm):
    def forward(self, x):
        return torch.ops.aten.rms_norm.default(x, self.normalized_shape, self.weight, self.eps)


class _AtenBatchNorm2d(torch.nn.BatchNorm2d):
    def forward(self, x):
        # The module's momentum and step count as torch.nn.BatchNorm2d keeps them (momentum set).
        if self.training:
            self.num_batches_tracked.add_(1)
        return torch.ops.aten.batch_norm.default(
            x,
            self.weight,
            self.bias,
            self.running_mean,
            self.running_var,
            self.training,
            self.momentum,
            self.eps,
            False,
        )


class _AtenGroupNorm(torch.nn.GroupNorm):
    def forward(self, x):
        return torch.ops.aten.group_norm.default(x, self.num_groups, self.weight, self.bias, self.eps, False)


class _AtenInstanceNorm2d(torch.nn.InstanceNorm2d):
    def forward(self, x):
        return torch.ops.aten.instance_norm.default(
            x, self.weight, self.bias, self.running_mean, self.running_var, True, self.momentum, self.eps, False
        )


CASES = [
    Case(
        "LayerNorm",
        (1, 768),
        lambda: torch.nn.LayerNorm(768),
        lambda: norm_ext.nn.LayerNorm(768),
        lambda: _AtenLayerNorm(768),
    ),
    Case(
        "LayerNorm",
        (8, 768),
        lambda: torch.nn.LayerNorm(768),
        lambda: norm_ext.nn.LayerNorm(768),
        lambda: _AtenLayerNorm(768),
    ),
    Case(
        "RMSNorm", (1, 768), lambda: torch.nn.RMSNorm(768), lambda: norm_ext.nn.RMSNorm(768), lambda: _AtenRMSNorm(768)
    ),
    Case(
        "BatchNorm2d",
        (2, 8, 4, 4),
        lambda: torch.nn.BatchNorm2d(8),
        lambda: norm_ext.nn.BatchNorm2d(8),
        lambda: _AtenBatchNorm2d(8),
    ),
    Case(
        "BatchNorm2d",
        (2, 8, 4, 4),
        lambda: torch.nn.BatchNorm2d(8),
        lambda: norm_ext.nn.BatchNorm2d(8),
        lambda: _AtenBatchNorm2d(8),
        training=False,
    ),
    Case(
        "GroupNorm",
        (2, 8, 4, 4),
        lambda: torch.nn.GroupNorm(4, 8),
        lambda: norm_ext.nn.GroupNorm(4, 8),
        lambda: _AtenGroupNorm(4, 8),
    ),
    Case(
        "InstanceNorm2d",
        (2, 8, 4, 4),
        lambda: torch.nn.InstanceNorm2d(8, affine=True),
        lambda: norm_ext.nn.InstanceNorm2d(8, affine=True),
        lambda: _AtenInstanceNorm2d(8, affine=True),
    ),
]


def _loop(module: torch.nn.Module, x: torch.Tensor, mode: str, calls: int) -> float:
    """Seconds per call of ``calls`` calls in ``mode``."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    if mode == "no_grad":
        with torch.no_grad():
            for _ in range(calls):
                module(x)
    elif mode == "grad":
        for _ in range(calls):
            module(x)
    else:
        for _ in range(calls):
            module(x).sum().backward()
    sync()
    return (time.perf_counter() - start) / calls


def measure(device: str = "cpu", calls: int = 2000, rounds: int = 5) -> List[Dict]:
    """One row per case and mode: µs per call for torch and norm_ext, and their ratio."""
    rows = []
    for case in CASES:
        x = torch.randn(case.shape, device=device)
        modules = {
            "torch": case.torch_module().to(device),
            "norm_ext": case.ours_module().to(device),
            "aten": case.aten_module().to(device),
        }
        for m in modules.values():
            m.train(case.training)
        # Same parameters, and the norm_ext module also loads the torch one's state_dict.
        for name in ("norm_ext", "aten"):
            modules[name].load_state_dict(modules["torch"].state_dict())
        # A cheap call that computes something else would win: outputs must agree before timing.
        with torch.no_grad():
            for name in ("norm_ext", "aten"):
                torch.testing.assert_close(modules[name](x), modules["torch"](x), rtol=1e-5, atol=1e-5)
        for mode in MODES:
            best = {k: float("inf") for k in modules}
            for m in modules.values():
                _loop(m, x, mode, max(calls // 20, 10))  # warm-up: first-call caches, allocator
            for _ in range(rounds):
                for k, m in modules.items():
                    best[k] = min(best[k], _loop(m, x, mode, calls // rounds))
            rows.append(
                {
                    "case": case.label,
                    "mode": mode,
                    "torch_us": best["torch"] * 1e6,
                    "norm_ext_us": best["norm_ext"] * 1e6,
                    "ratio": best["norm_ext"] / best["torch"],
                    "torch_ops_aten_us": best["aten"] * 1e6,
                    "ratio_to_aten": best["norm_ext"] / best["aten"],
                }
            )
    return rows


def table(rows: List[Dict]) -> str:
    """A Markdown table; the ratios are norm_ext's time over torch's, and over torch's op called the way
    a custom op is called, through torch.ops.aten (below 1: norm_ext is cheaper)."""
    lines = [
        "| case | mode | torch µs | torch via torch.ops.aten µs | norm_ext µs | norm_ext / torch "
        "| norm_ext / torch.ops.aten |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['mode']} | {r['torch_us']:.1f} | {r['torch_ops_aten_us']:.1f} | "
            f"{r['norm_ext_us']:.1f} | {r['ratio']:.2f} | {r['ratio_to_aten']:.2f} |"
        )
    return "\n".join(lines)


def write_csv(rows: List[Dict], path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def describe(device: str) -> str:
    """Where and when the table was measured."""
    return (
        f"{device_name(device)} ({device}), {torch.get_num_threads()} CPU threads, torch {torch.__version__}, "
        f"norm_ext {norm_ext_commit()}, {datetime.date.today().isoformat()}"
    )
