"""Command line of the benchmark: ``python -m norm_ext.bench [options]``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List

import torch

from . import cases as C
from . import overhead, report
from .harness import DEFAULT_PROVIDERS, Config, run
from .providers import PROVIDER_FACTORIES
from .timing import keep_freed_memory

DEFAULT_OPS = ("layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm", "batch_norm", "group_norm",
               "group_norm_silu", "instance_norm", "weight_norm")  # fmt: skip


# The default keeps a plain run to a few minutes on a 2-core CPU; the backward alone is fwd+bwd - fwd.
DEFAULT_PASSES = ("fwd", "fwd+bwd")


def _csv(text: str) -> List[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _sweep(path_and_name: str) -> dict:
    path, _, name = path_and_name.partition(":")
    with open(path) as f:
        sweeps = json.load(f)
    if not name:
        raise ValueError(f"--sweep needs FILE:NAME; {path} defines {list(sweeps)}")
    if name not in sweeps:
        raise ValueError(f"--sweep: {path} has no sweep {name!r}; it defines {list(sweeps)}")
    return sweeps[name]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m norm_ext.bench",
        description="Compare norm_ext with torch eager, torch.compile and installed libraries. Every output "
        "is checked against a float64 reference before it is timed; a wrong result is reported as WRONG.",
        epilog=f"Ops: {', '.join(C.OPS)}. Providers: {', '.join(PROVIDER_FACTORIES)}.",
    )
    p.add_argument("--ops", type=_csv, help=f"comma-separated (default: {','.join(DEFAULT_OPS)})")
    p.add_argument("--dtypes", type=_csv, default=["fp32", "bf16"], help="fp32,bf16,fp16,fp64 (default fp32,bf16)")
    p.add_argument(
        "--sizes",
        type=_csv,
        help="HIDDEN, ROWSxHIDDEN or NxCxHxW, comma-separated; each op takes "
        "the sizes of its rank (default: the op's sweep, sized to exceed the CPU's L3)",
    )
    p.add_argument(
        "--pass",
        dest="passes",
        type=_csv,
        default=list(DEFAULT_PASSES),
        help="fwd,bwd,fwd+bwd (default fwd,fwd+bwd; bwd alone on request)",
    )
    p.add_argument(
        "--device",
        choices=("cpu", "cuda", "simt"),
        help="default: cuda when a GPU is visible, else cpu; simt: norm_ext's CUDA kernels on the SIMT "
        "backend (a build with NORM_EXT_SIMT=1), the other providers on the CPU, at the --quick sizes "
        "unless --sizes says otherwise; it checks results and rehearses a GPU run, its times say nothing",
    )
    p.add_argument(
        "--compile-shapes",
        choices=("static", "dynamic"),
        help="torch.compile's shapes (default: static on CUDA, a compile per case; dynamic on a CPU, a "
        "compile per op, dtype and pass)",
    )
    p.add_argument("--providers", type=_csv, default=list(DEFAULT_PROVIDERS), help="default: all, absent ones skipped")
    p.add_argument("--out", default="bench_out", help="directory for results.csv/.json and plots/")
    p.add_argument("--quick", action="store_true", help="small sizes and short timing, a smoke test")
    p.add_argument("--min-time", type=float, help="seconds of timing per measurement (default 0.3, quick 0.02)")
    p.add_argument("--reps", type=int, help="maximum timed calls per measurement (default 200, quick 5)")
    p.add_argument("--warmup", type=int, help="untimed calls first (default: 3 on a GPU, else 1)")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's, i.e. the cores available)")
    p.add_argument(
        "--cpu-memory",
        choices=("reused", "fresh"),
        default="reused",
        help="reused (default): glibc keeps freed memory, so CPU timings are the kernels; fresh: host "
        "memory as glibc gives it by default, so every call's large CPU outputs are new pages whose "
        "faults (the same for every provider) are timed too",
    )
    p.add_argument("--no-graph", action="store_true", help="GPU: never time through a CUDA graph")
    p.add_argument(
        "--overhead",
        action="store_true",
        help="instead of the kernel comparison: host time per call at tiny shapes (LayerNorm 1x768 and "
        "8x768, RMSNorm, BatchNorm2d in training and eval, GroupNorm, InstanceNorm2d), no_grad, with grad "
        "and forward+backward, torch and norm_ext side by side in this process; writes overhead.md and "
        "overhead.csv to --out",
    )
    p.add_argument("--no-plots", action="store_true")
    p.add_argument(
        "--sweep",
        help="FILE:NAME from a sweep file such as benchmarks/sweeps.json (sets ops, "
        "dtypes, sizes, passes; flags given explicitly win)",
    )
    return p


def main(argv: List[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.sweep:
        try:
            sweep = _sweep(args.sweep)
        except (OSError, ValueError) as e:
            parser.error(str(e))
        args.ops = args.ops or sweep.get("ops")
        args.sizes = args.sizes or sweep.get("sizes")
        if "dtypes" in sweep and argv_lacks("--dtypes", argv):
            args.dtypes = sweep["dtypes"]
        if "passes" in sweep and argv_lacks("--pass", argv):
            args.passes = sweep["passes"]
        args.device = args.device or sweep.get("device")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_memory == "reused":
        try:
            keep_freed_memory()
        except RuntimeError as e:
            parser.error(str(e))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.overhead:
        return _overhead(device, args.out, args.reps)
    try:
        sizes = [C.parse_size(s) for s in args.sizes] if args.sizes else None
    except ValueError as e:
        parser.error(str(e))
    quick = args.quick
    config = Config(
        ops=args.ops or list(DEFAULT_OPS),
        dtypes=args.dtypes,
        passes=args.passes,
        device=device,
        sizes=sizes,
        quick=quick,
        providers=args.providers,
        min_time_s=args.min_time if args.min_time is not None else (0.02 if quick else 0.3),
        max_reps=args.reps if args.reps is not None else (5 if quick else 200),
        warmup=args.warmup if args.warmup is not None else (1 if quick or device != "cuda" else 3),
        use_graph=not args.no_graph,
        compile_dynamic=None if args.compile_shapes is None else args.compile_shapes == "dynamic",
        cpu_memory=args.cpu_memory,
        argv=["python -m norm_ext.bench"] + list(sys.argv[1:] if argv is None else argv),
    )
    try:
        meta, rows = run(config)
    except ValueError as e:
        parser.error(str(e))
    print(report.table(rows))
    os.makedirs(args.out, exist_ok=True)
    written = [report.write_csv(rows, os.path.join(args.out, "results.csv")),
               report.write_json(meta, rows, os.path.join(args.out, "results.json"))]  # fmt: skip
    if not args.no_plots:
        plots = report.plot(meta, rows, os.path.join(args.out, "plots"))
        if plots is None:
            print("note: matplotlib is not installed, so no plots were drawn (pip install 'norm_ext[bench]')")
        else:
            written.append(f"{len(plots)} plots in {os.path.join(args.out, 'plots')}")
    print(f"\n{meta['device_name']}, {meta['cpu_threads']} CPU threads ({meta['cpu_memory']} memory), "
          f"torch {meta['torch_version']}, norm_ext {meta['norm_ext_commit']}, {meta['date']}")  # fmt: skip
    print(f"accounting: {meta['accounting']}")
    timed = [r for r in rows if r["copy_gbps"]]
    if timed:
        clone = [r["copy_gbps"] for r in timed]
        into = [r["copy_into_gbps"] for r in timed]
        print(f"copy: clone {min(clone):.3g}-{max(clone):.3g} GB/s, into an existing tensor "
              f"{min(into):.3g}-{max(into):.3g} GB/s; the gap is what a fresh output costs every provider")  # fmt: skip
    print("wrote " + ", ".join(written))
    wrong = [r for r in rows if r["status"] == "WRONG"]
    if wrong:
        print(f"{len(wrong)} result(s) WRONG against the float64 reference (see the status column)")
    return 0


def _overhead(device: str, out_dir: str, reps: int | None) -> int:
    if device == "simt":
        raise SystemExit("--overhead measures host time on cpu or cuda; the SIMT backend's times say nothing")
    rows = overhead.measure(device, calls=reps or 2000)
    text = overhead.table(rows)
    print(text)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "overhead.md"), "w") as f:
        f.write(text + "\n")
    overhead.write_csv(rows, os.path.join(out_dir, "overhead.csv"))
    print(f"\n{overhead.describe(device)}\nwrote {os.path.join(out_dir, 'overhead.md')} and overhead.csv")
    return 0


def argv_lacks(flag: str, argv: List[str] | None) -> bool:
    args = sys.argv[1:] if argv is None else argv
    return not any(a == flag or a.startswith(flag + "=") for a in args)


if __name__ == "__main__":
    sys.exit(main())
