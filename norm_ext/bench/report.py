"""Outputs: the terminal table, CSV, JSON and PNG plots of one benchmark run."""

from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from typing import Dict, List, Sequence

COLUMNS = (
    "op", "case", "variant", "shape", "hidden", "dtype", "pass", "provider", "status", "ms", "spread_ms", "reps",
    "cuda_graph", "bytes", "gbps", "copy_gbps", "copy_into_gbps", "pct_copy", "speedup_vs_torch", "max_err_over_tol",
    "note",
)  # fmt: skip

SCHEMA_VERSION = 2


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def table(rows: Sequence[Dict[str, object]]) -> str:
    """One block per op, dtype and pass; one line per case and provider."""
    groups: Dict[tuple, List[Dict[str, object]]] = defaultdict(list)
    for r in rows:
        groups[(r["op"], r["dtype"], r["pass"])].append(r)
    header = f"{'case':<22} {'provider':<18} {'ms':>9} {'±':>7} {'GB/s':>8} {'%copy':>6} {'vs torch':>8}  status"
    lines = []
    for (op, dtype, pass_name), group in groups.items():
        lines += ["", f"== {op} {dtype} {pass_name}", header]
        for r in group:
            pct = "-" if r["pct_copy"] is None else f"{r['pct_copy']:.0f}%"
            speedup = "-" if r["speedup_vs_torch"] is None else f"{r['speedup_vs_torch']:.2f}x"
            status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['note']}"
            lines.append(
                f"{r['case']:<22} {r['provider']:<18} {_fmt(r['ms']):>9} {_fmt(r['spread_ms'], 2):>7} "
                f"{_fmt(r['gbps']):>8} {pct:>6} {speedup:>8}  {status}"
            )
    return "\n".join(lines)


def write_csv(rows: Sequence[Dict[str, object]], path: str) -> str:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS})
    return path


def write_json(meta: Dict[str, object], rows: Sequence[Dict[str, object]], path: str) -> str:
    with open(path, "w") as f:
        json.dump({"schema_version": SCHEMA_VERSION, "meta": meta, "results": list(rows)}, f, indent=1)
    return path


def load_json(path: str):
    with open(path) as f:
        data = json.load(f)
    return data["meta"], data["results"]


def plot(meta: Dict[str, object], rows: Sequence[Dict[str, object]], out_dir: str) -> List[str] | None:
    """GB/s vs hidden size per op, dtype, pass and layout variant; one line per provider and the
    measured copy bandwidth as a dashed line. Returns the PNG paths, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    os.makedirs(out_dir, exist_ok=True)
    groups: Dict[tuple, List[Dict[str, object]]] = defaultdict(list)
    for r in rows:
        groups[(r["op"], r["dtype"], r["pass"], r["variant"])].append(r)
    paths = []
    for (op, dtype, pass_name, variant), group in sorted(groups.items()):
        ok = [r for r in group if r["status"] == "ok"]
        if not ok:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        by_provider: Dict[str, list] = defaultdict(list)
        copy: Dict[int, float] = {}
        copy_into: Dict[int, float] = {}
        for r in ok:
            by_provider[r["provider"]].append((r["hidden"], r["gbps"]))
            copy[r["hidden"]] = r["copy_gbps"]
            copy_into[r["hidden"]] = r["copy_into_gbps"]
        for provider, points in by_provider.items():
            xs, ys = zip(*sorted(points))
            ax.plot(xs, ys, marker="o", label=provider)
        xs = sorted(copy)
        ax.plot(xs, [copy[x] for x in xs], "k--", label="copy (measured)")
        ax.plot(xs, [copy_into[x] for x in xs], "k:", label="copy into existing tensor (measured)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel(
            "normalized length"
            if op in ("layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm", "weight_norm")
            else "channels"
        )
        ax.set_ylabel("GB/s")
        suffix = "" if variant == "default" else f" {variant}"
        ax.set_title(f"{op}{suffix} {dtype} {pass_name} - {meta['device_name']}", fontsize=9)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        name = f"{op}_{dtype}_{pass_name.replace('+', '_')}" + ("" if variant == "default" else f"_{variant}")
        path = os.path.join(out_dir, name + ".png")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
