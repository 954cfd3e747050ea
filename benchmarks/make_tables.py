"""Markdown tables for the README from a results file of ``python -m norm_ext.bench``.

    python benchmarks/make_tables.py bench_results/results.json [--passes fwd,fwd+bwd] [--summary] > tables.md

One table per op and pass: a row per case and dtype, a column per provider with GB/s, % of the
measured copy bandwidth and the speed relative to torch eager. WRONG/error results are shown as such.
--summary gives one table instead, norm_ext's row per case with its ratios to torch eager and
torch.compile (the README's table).
"""

import argparse
import json
from collections import OrderedDict


def _cell(row):
    if row is None:
        return "-"
    if row["status"] != "ok":
        return row["status"]
    speedup = row.get("speedup_vs_torch")
    tail = f", {speedup:.2f}x" if speedup else ""
    return f"{row['gbps']:.1f} ({row['pct_copy']:.0f}%{tail})"


def tables(data, passes=None):
    meta, rows = data["meta"], data["results"]
    groups = OrderedDict()
    for r in rows:
        if passes and r["pass"] not in passes:
            continue
        groups.setdefault((r["op"], r["pass"]), []).append(r)
    out = [
        f"Device: {meta['device_name']} ({meta['device']}, {meta['cpu_threads']} CPU threads), torch "
        f"{meta['torch_version']}, norm_ext {meta['norm_ext_commit']}, {meta['date']}.",
        *(
            [f"CPU kernels: norm_ext {meta['cpu_isa']}, torch {meta['torch_cpu_capability']}."]
            if "cpu_isa" in meta
            else []
        ),
        "",
        "Cells: GB/s (% of copy = of a clone of the same bytes measured in the same run, speed vs torch eager). "
        f"{meta['accounting']}",
    ]
    for (op, pass_name), group in groups.items():
        providers = list(OrderedDict.fromkeys(r["provider"] for r in group if r["status"] != "skipped"))
        if not providers:
            continue
        cases = list(OrderedDict.fromkeys((r["case"], r["dtype"]) for r in group))
        index = {(r["case"], r["dtype"], r["provider"]): r for r in group}
        out += ["", f"### {op} {pass_name}", ""]
        out.append("| shape | dtype | copy GB/s | " + " | ".join(providers) + " |")
        out.append("|---|---|---|" + "---|" * len(providers))
        for case, dtype in cases:
            copy = next(
                (r["copy_gbps"] for r in group if r["case"] == case and r["dtype"] == dtype and r["copy_gbps"]), None
            )
            cells = [_cell(index.get((case, dtype, p))) for p in providers]
            copy_text = "-" if copy is None else f"{copy:.1f}"
            out.append(f"| {case} | {dtype} | {copy_text} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def summary(data, passes=None):
    rows = [r for r in data["results"] if not passes or r["pass"] in passes]
    index = {(r["op"], r["case"], r["dtype"], r["pass"], r["provider"]): r for r in rows}

    def ratio(ours, provider):
        other = index.get((ours["op"], ours["case"], ours["dtype"], ours["pass"], provider))
        if other is None or other["status"] == "skipped":
            return "-"
        if other["status"] != "ok":
            return f"{other['status']} ({provider})"
        return f"{other['ms'] / ours['ms']:.2f}x"

    out = [
        "| op | dtype | shape | pass | norm_ext GB/s (% of copy) | vs torch | vs torch.compile |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["provider"] != "norm_ext":
            continue
        cell = _cell(r) if r["status"] != "ok" else f"{r['gbps']:.1f} ({r['pct_copy']:.0f}%)"
        ratios = (ratio(r, "torch"), ratio(r, "torch.compile")) if r["status"] == "ok" else ("-", "-")
        out.append(f"| {r['op']} | {r['dtype']} | {r['case']} | {r['pass']} | {cell} | {ratios[0]} | {ratios[1]} |")
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="results.json written by python -m norm_ext.bench")
    parser.add_argument("--passes", help="comma-separated subset of fwd,bwd,fwd+bwd")
    parser.add_argument("--summary", action="store_true", help="norm_ext's row per case with its ratios")
    args = parser.parse_args(argv)
    with open(args.results) as f:
        data = json.load(f)
    passes = args.passes.split(",") if args.passes else None
    print(summary(data, passes) if args.summary else tables(data, passes))


if __name__ == "__main__":
    main()
