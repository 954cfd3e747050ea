"""The benchmark loop: for every case, pass and provider, check the result against the float64
reference, then time it, and compare it with a copy of the same number of bytes."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Dict, List, Sequence, Tuple

import torch
from torch import Tensor

import norm_ext

from .. import simt
from . import cases as C
from .providers import Provider, compile_is_dynamic, load_providers
from .timing import time_calls

# Largest allowed error, relative to max(1, max |reference|), per dtype: (output, gradients).
TOLERANCES = {
    torch.float64: (1e-9, 1e-8),
    torch.float32: (1e-4, 1e-3),
    torch.float16: (5e-3, 1e-2),
    torch.bfloat16: (3e-2, 5e-2),
}

DEFAULT_PROVIDERS = ("norm_ext", "torch", "torch.compile", "apex", "liger", "quack", "transformer_engine", "flash_attn")

ACCOUNTING = (
    "bytes moved = algorithmic minimum, the same for every provider: fwd reads x (and the residual) and "
    "writes y (and h), plus parameters; bwd reads the saved activation and dy and writes dx, plus "
    "parameters read and their gradients written; fwd+bwd is the sum. copy GB/s = x.clone()-style copies "
    "of the same number of bytes, in blocks of the activation's size, measured in the same run; they "
    "allocate their outputs as every provider does. copy_into GB/s = the same copies into existing "
    "tensors. Their gap is the cost of a fresh output (on a CPU: the page faults of a newly mapped "
    "block), which every provider pays."
)


@dataclass
class Config:
    ops: Sequence[str]
    dtypes: Sequence[str] = ("fp32", "bf16")
    passes: Sequence[str] = C.PASSES
    device: str = "cpu"
    sizes: Sequence[Tuple[int, ...]] | None = None
    quick: bool = False
    providers: Sequence[str] = DEFAULT_PROVIDERS
    min_time_s: float = 0.3
    max_reps: int = 200
    warmup: int = 3
    use_graph: bool = True
    compile_dynamic: bool | None = None  # torch.compile with dynamic shapes; None: the provider's default
    cpu_memory: str = "fresh"  # what the process does; the CLI's default "reused" calls timing.keep_freed_memory
    show_progress: bool = True
    argv: List[str] = field(default_factory=lambda: list(sys.argv))


class Progress:
    """A one-line progress bar on stderr (redrawn in place on a terminal, a line per step otherwise)."""

    def __init__(self, total: int, enabled: bool = True, width: int = 30) -> None:
        self.total, self.done, self.enabled, self.width = max(total, 1), 0, enabled, width
        self.tty = sys.stderr.isatty()

    def step(self, label: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        filled = self.width * self.done // self.total
        bar = f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} {label}"
        if self.tty:
            sys.stderr.write("\r\033[K" + bar)
            if self.done == self.total:
                sys.stderr.write("\n")
        else:
            sys.stderr.write(bar + "\n")
        sys.stderr.flush()

    def write(self, message: str) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\r\033[K")
        print(message, flush=True)


def norm_ext_commit() -> str:
    """The checkout's commit; where the tree is a copy without git (a lent GPU machine), the commit that
    the caller names in NORM_EXT_COMMIT."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if os.environ.get("NORM_EXT_COMMIT"):
        return os.environ["NORM_EXT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=10
        )
        commit = out.stdout.strip()
        if out.returncode != 0 or not commit:
            return "unknown"
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def tensor_device(device: str) -> str:
    """Where a case's tensors live: the SIMT backend runs the CUDA kernels on CPU tensors."""
    return "cpu" if device == "simt" else device


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    if device == "simt":
        return f"SIMT host build of the CUDA kernels on {device_name('cpu')}"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def metadata(config: Config) -> Dict[str, object]:
    return {
        "device": config.device,
        "device_name": device_name(config.device),
        "cpu_threads": torch.get_num_threads(),
        "cpu_isa": norm_ext.cpu_isa(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_memory": config.cpu_memory,
        "logical_cpus": os.cpu_count(),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "torch_compile_shapes": "dynamic" if compile_is_dynamic(config.device, config.compile_dynamic) else "static",
        "norm_ext_commit": norm_ext_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(config.argv),
        "accounting": ACCOUNTING,
        "tolerances": {str(k).replace("torch.", ""): v for k, v in TOLERANCES.items()},
    }


def _max_rel_error(actual: Tensor, expected: Tensor) -> float:
    if actual.shape != expected.shape:
        raise ValueError(f"shape {tuple(actual.shape)} != reference {tuple(expected.shape)}")
    if expected.numel() == 0:
        return 0.0
    diff = (actual.detach().double() - expected).abs().max().item()
    if diff != diff:  # NaN anywhere
        return float("inf")
    return diff / max(1.0, expected.abs().max().item())


class _Runner:
    """Closures for one case and provider: the forward, the backward of a stored forward, and both,
    each inside the provider's context (the SIMT backend's must hold for the backward too)."""

    def __init__(self, case: C.Case, fn: Callable, grad_out: Tensor, context: Callable[[], ContextManager]) -> None:
        self.case, self.fn, self.grad_out, self.context = case, fn, grad_out, context
        self.spec = C.OPS[case.op]
        # A stored forward may have saved the running stats (torch's batch_norm does): another
        # provider's forward updating the shared ones in place would fail its backward.
        self.inputs = {n: t.clone() if n in self.spec.stateful else t for n, t in case.inputs.items()}
        self.leaves = [case.inputs[n] for n in case.grad_names]
        self.stored = None

    def forward_no_grad(self):
        with self.context(), torch.no_grad():
            return self.spec.call(self.fn, self.inputs)

    def forward(self) -> Tensor:
        with self.context():
            return C.first_output(self.spec.call(self.fn, self.inputs))

    def backward_of(self, out: Tensor, retain: bool):
        with self.context():
            return torch.autograd.grad(out, self.leaves, self.grad_out, retain_graph=retain, allow_unused=True)

    def backward_stored(self):
        if self.stored is None:
            self.stored = self.forward()
        return self.backward_of(self.stored, retain=True)

    def forward_backward(self):
        return self.backward_of(self.forward(), retain=False)

    def timed(self, pass_name: str) -> Callable[[], object]:
        return {"fwd": self.forward_no_grad, "bwd": self.backward_stored, "fwd+bwd": self.forward_backward}[pass_name]


# Largest case checked in full. GPU: float64 copies of bigger ones (x, y, dy, dx, temporaries) would not
# fit in memory. CPU: checking a 64 MB case in float64 took half of a default run's time. Row norms are
# checked on their first rows instead: same row length, same kernel.
CHECK_MAX_ELEMENTS = {"cuda": 1 << 26, "cpu": 1 << 22}


def _grad_out_for(case: C.Case) -> Tensor:
    grad_out = torch.randn(case.shape, device=case.device).to(case.dtype)
    return grad_out.contiguous(memory_format=torch.channels_last) if case.variant.channels_last else grad_out


def checkable_case(case: C.Case) -> Tuple[C.Case, Tensor]:
    """The case the correctness check runs on, and its grad_out: the case itself unless too large."""
    numel = C.activation_bytes(case) // case.dtype.itemsize
    limit = CHECK_MAX_ELEMENTS["cuda" if case.device == "cuda" else "cpu"]
    if numel <= limit or case.op not in C.ROW_NORMS:
        return case, _grad_out_for(case)
    rows = max(1, limit // case.shape[-1])
    small = C.make_case(case.op, case.variant, (rows, case.shape[-1]), case.dtype, case.device)
    return small, _grad_out_for(small)


def check(case: C.Case, runner: _Runner, pass_name: str) -> Tuple[bool, float, str]:
    """Compare the provider's output (and, for passes with a backward, its gradients) with float64."""
    out_tol, grad_tol = TOLERANCES[case.dtype]
    ref_out, ref_grads = C.reference_outputs(case, runner.grad_out)
    worst, notes = 0.0, []
    out = C.first_output(runner.forward_no_grad())
    err = _max_rel_error(out, ref_out)
    worst = max(worst, err / out_tol)
    if err > out_tol:
        notes.append(f"output error {err:.2e} > {out_tol:.0e}")
    if pass_name != "fwd":
        grads = runner.backward_of(runner.forward(), retain=False)
        for name, grad in zip(case.grad_names, grads):
            if grad is None or name not in ref_grads:
                continue
            err = _max_rel_error(grad, ref_grads[name])
            worst = max(worst, err / grad_tol)
            if err > grad_tol:
                notes.append(f"grad {name} error {err:.2e} > {grad_tol:.0e}")
    return not notes, worst, "; ".join(notes)


def copy_fns(device: str, nbytes: int, block_bytes: int) -> List[Callable[[], object]]:
    """Two copies that move ``nbytes`` (read half, write half) in blocks of the op's activation size: a
    clone, which allocates each output block as the providers allocate theirs, and a copy into existing
    tensors. The block size matters on a CPU: glibc serves blocks up to 32 MB from its heap but maps
    larger ones afresh, page faults included, so one clone of ``nbytes / 2`` would pay a different
    allocation cost than an op whose outputs are activation-sized."""
    half = max(nbytes // 2, 1)
    block = max(1, min(block_bytes, half))
    sizes = [block] * (half // block) + ([half % block] if half % block else [])
    sources = [torch.empty(size, dtype=torch.uint8, device=device).fill_(1) for size in sizes]
    targets = [torch.empty_like(src) for src in sources]

    def clone() -> List[Tensor]:
        return [src.clone() for src in sources]

    def copy_into() -> None:
        for dst, src in zip(targets, sources):
            dst.copy_(src)

    return [clone, copy_into]


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _row(case: C.Case, pass_name: str, provider: str, status: str, **fields) -> Dict[str, object]:
    row = {
        "op": case.op,
        "case": case.label,
        "variant": case.variant.label,
        "shape": "x".join(str(d) for d in case.shape),
        "hidden": case.hidden,
        "dtype": case.dtype_name,
        "pass": pass_name,
        "provider": provider,
        "status": status,
        "ms": None,
        "spread_ms": None,
        "reps": None,
        "cuda_graph": None,
        "bytes": None,
        "gbps": None,
        "copy_gbps": None,
        "copy_into_gbps": None,
        "pct_copy": None,
        "speedup_vs_torch": None,
        "max_err_over_tol": None,
        "note": "",
    }
    row.update(fields)
    return row


def plan(config: Config, available_ops: Sequence[str]) -> List[Tuple[str, C.Variant, Tuple[int, ...], str]]:
    items = []
    for op in available_ops:
        for dtype_name in config.dtypes:
            dtype = C.DTYPES[dtype_name]
            # The SIMT backend runs a kernel's threads one at a time: the quick sizes unless told.
            quick = config.quick or config.device == "simt"
            for shape in C.shapes_for(op, dtype, tensor_device(config.device), config.sizes, quick):
                for variant in C.variants_for(op, shape):
                    items.append((op, variant, shape, dtype_name))
    return items


def run(
    config: Config, providers: List[Provider] | None = None, log: Callable[[str], None] | None = None
) -> Tuple[Dict[str, object], List[Dict[str, object]]]:
    """Run the benchmark; returns (metadata, result rows). ``providers`` overrides ``config.providers``."""
    for name in config.dtypes:
        if name not in C.DTYPES:
            raise ValueError(f"unknown dtype {name!r}; choose from {list(C.DTYPES)}")
    for name in config.passes:
        if name not in C.PASSES:
            raise ValueError(f"unknown pass {name!r}; choose from {list(C.PASSES)}")
    for name in config.ops:
        if name not in C.OPS:
            raise ValueError(f"unknown op {name!r}; choose from {list(C.OPS)}")
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is visible")
    if config.device == "simt" and not simt.available():
        raise ValueError(f"--device simt: {simt.unavailable_reason()}")
    if providers is None:
        providers = load_providers(list(config.providers), config.device, config.compile_dynamic)
    say = log or print

    meta = metadata(config)
    say(
        f"norm_ext.bench on {meta['device_name']} ({config.device}), torch {meta['torch_version']}, "
        f"norm_ext {meta['norm_ext_commit']}, {meta['cpu_threads']} CPU threads; CPU kernels: norm_ext "
        f"{meta['cpu_isa']}, torch {meta['torch_cpu_capability']}"
    )
    for p in providers:
        reason = p.unavailable or (p.cuda_only and config.device != "cuda" and f"{p.name} runs on CUDA only")
        if reason:
            say(f"  provider {p.name}: skipped ({reason})")
    reference_provider = next((p for p in providers if p.name == "norm_ext"), None)
    ops = []
    for op in config.ops:
        missing = reference_provider.skip_reason(op, config.device) if reference_provider else None
        if missing:
            say(f"  op {op}: skipped ({missing})")
        else:
            ops.append(op)
    active = [p for p in providers if not (p.unavailable or (p.cuda_only and config.device != "cuda"))]

    items = plan(config, ops)
    progress = Progress(len(items) * len(config.passes) * len(active), config.show_progress)
    rows: List[Dict[str, object]] = []
    for op, variant, shape, dtype_name in items:
        torch.manual_seed(0)
        case = C.make_case(op, variant, shape, C.DTYPES[dtype_name], tensor_device(config.device))
        grad_out = _grad_out_for(case)
        check_case, check_grad_out = checkable_case(case)
        checked: Dict[Tuple[str, bool], Tuple[bool, float, str]] = {}
        for pass_name in config.passes:
            nbytes = C.bytes_moved(case, pass_name)
            timed: List[Tuple[str, Callable[[], object], float]] = []
            for provider in active:
                progress.step(f"{op} {dtype_name} {case.label} {pass_name} {provider.name}")
                skip = provider.skip_reason(op, config.device)
                if skip:
                    rows.append(_row(case, pass_name, provider.name, "skipped", note=skip))
                    continue
                runner = _Runner(case, provider.functions[op], grad_out, provider.context)
                try:
                    key = (provider.name, pass_name != "fwd")
                    if key not in checked:
                        check_runner = _Runner(check_case, provider.functions[op], check_grad_out, provider.context)
                        checked[key] = check(check_case, check_runner, pass_name)
                    ok, worst, note = checked[key]
                    if not ok:
                        rows.append(_row(case, pass_name, provider.name, "WRONG", max_err_over_tol=worst, note=note))
                        continue
                    fn = runner.timed(pass_name)
                    fn()  # a provider failing on the full-size case is reported, not timed
                except Exception as e:  # a provider failing on one case must not end the run
                    rows.append(_row(case, pass_name, provider.name, "error", note=_first_line(e)))
                    continue
                timed.append((provider.name, fn, worst))
            if not timed:
                continue
            timings = time_calls(
                copy_fns(tensor_device(config.device), nbytes, C.activation_bytes(case)) + [fn for _, fn, _ in timed],
                config.device,
                bytes_moved=nbytes,
                min_time_s=config.min_time_s,
                max_reps=config.max_reps,
                warmup=config.warmup,
                use_graph=config.use_graph,
            )
            copy, copy_into = (nbytes / (t.median_ms * 1e6) for t in timings[:2])
            for (name, _, worst), t in zip(timed, timings[2:]):
                gbps = nbytes / (t.median_ms * 1e6)
                rows.append(
                    _row(
                        case,
                        pass_name,
                        name,
                        "ok",
                        ms=t.median_ms,
                        spread_ms=t.spread_ms,
                        reps=t.reps,
                        cuda_graph=t.graph,
                        bytes=nbytes,
                        gbps=gbps,
                        copy_gbps=copy,
                        copy_into_gbps=copy_into,
                        pct_copy=100.0 * gbps / copy,
                        max_err_over_tol=worst,
                    )
                )
        del case
    _add_speedups(rows)
    return meta, rows


def _add_speedups(rows: List[Dict[str, object]]) -> None:
    torch_ms = {
        (r["op"], r["case"], r["dtype"], r["pass"]): r["ms"] for r in rows if r["provider"] == "torch" and r["ms"]
    }
    for r in rows:
        base = torch_ms.get((r["op"], r["case"], r["dtype"], r["pass"]))
        if base and r["ms"]:
            r["speedup_vs_torch"] = base / r["ms"]
