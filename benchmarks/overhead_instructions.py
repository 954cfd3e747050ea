"""Instructions per call of the bench's overhead cases (``norm_ext/bench/overhead.py``), counted by
valgrind's callgrind: a measure of host cost that a noisy machine does not move, beside the bench's
times. Each case, mode and implementation (torch's module, norm_ext's) runs in its own process under
callgrind, which counts only the timed loop (switched on around it through callgrind's client
requests, from a tiny C helper compiled here); the warm-up and the imports are not counted.

    python benchmarks/overhead_instructions.py [--calls 500] [--jobs 2] [--out FILE.md]

Needs valgrind, its headers (valgrind/callgrind.h) and a C compiler. The counts include the Python
interpreter's own work for the loop, the same for both implementations, and every thread's work
(OpenMP's idle workers made to sleep rather than spin).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import subprocess
import sys
import tempfile

HELPER = r"""
#include <valgrind/callgrind.h>
void counted(void (*fn)(void)) {
  CALLGRIND_START_INSTRUMENTATION;
  CALLGRIND_TOGGLE_COLLECT;
  fn();
  CALLGRIND_TOGGLE_COLLECT;
  CALLGRIND_STOP_INSTRUMENTATION;
}
"""


def _child(case_index: int, impl: str, mode: str, calls: int, helper: str) -> None:
    import ctypes

    import torch

    from norm_ext.bench.overhead import CASES, _loop

    case = CASES[case_index]
    torch.manual_seed(0)
    module = (case.torch_module if impl == "torch" else case.ours_module)()
    module.train(case.training)
    x = torch.randn(case.shape)
    _loop(module, x, mode, 50)
    run = ctypes.CFUNCTYPE(None)(lambda: _loop(module, x, mode, calls))
    ctypes.CDLL(helper).counted(run)


def _count(args) -> int:
    case_index, impl, mode, calls, helper = args
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        "--collect-atstart=no",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        str(case_index),
        impl,
        mode,
        str(calls),
        helper,
    ]
    # OpenMP's idle workers spin by default, and callgrind counts their spinning, which varies with
    # how valgrind schedules the threads (one BatchNorm case: 0.14M to 1.2M per call); passive
    # workers sleep, and the counts repeat.
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return int(re.search(r"Collected : (\d+)", proc.stderr).group(1)) // calls


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        case_index, impl, mode, calls, helper = sys.argv[2:7]
        _child(int(case_index), impl, mode, int(calls), helper)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", help="also write the Markdown table here")
    args = parser.parse_args()

    from norm_ext.bench.overhead import CASES, MODES

    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "counted.c")
        helper = os.path.join(tmp, "libcounted.so")
        with open(source, "w") as f:
            f.write(HELPER)
        subprocess.run(["cc", "-O1", "-shared", "-fPIC", source, "-o", helper], check=True)
        jobs = [
            (i, impl, mode, args.calls, helper)
            for i in range(len(CASES))
            for mode in MODES
            for impl in ("torch", "ours")
        ]
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            counts = dict(zip(jobs, pool.map(_count, jobs)))

    lines = [
        "| case | mode | torch instructions | norm_ext instructions | norm_ext / torch |",
        "|---|---|---|---|---|",
    ]
    for i, case in enumerate(CASES):
        for mode in MODES:
            t, o = (counts[(i, impl, mode, args.calls, helper)] for impl in ("torch", "ours"))
            lines.append(f"| {case.label} | {mode} | {t:,} | {o:,} | {o / t:.2f} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
