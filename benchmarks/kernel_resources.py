"""Per-kernel resources of the CUDA build (sm_90), read from the built extension by cuobjdump: registers,
stack frame, static shared memory, local memory, spill instructions (LDL / STL), 128-bit global loads and
stores, distributed shared memory and cluster barriers, the block size the kernel is bounded to
(``__launch_bounds__``) and the theoretical occupancy on an H200 at that block size. Needs a build with
the CUDA kernels (NORM_EXT_CUDA=1; no GPU needed) and cuobjdump: $CUDA_HOME/bin, PATH, or the copy that
triton ships with torch.

    python benchmarks/kernel_resources.py --out benchmarks/results/sm90-kernel-resources

Occupancy counts registers (allocated per warp in units of 256) and static shared memory (plus the 1 KB
the hardware reserves per block); the dynamic shared memory of a launch is not in the binary and not
counted. Kernels without ``__launch_bounds__`` launch with the fixed block size of their plan
(csrc/plans/, LAUNCH_THREADS below); the kernels bounded by ``__launch_bounds__`` (the row norms) are
reported at that bound, the largest block their plans launch.
"""

import argparse
import csv
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

# H100 / H200 SXM, per SM (csrc/plans/device.h).
REGS_PER_SM = 65536
REG_ALLOC_UNIT = 256  # registers, per warp
MAX_THREADS_PER_SM = 2048
MAX_BLOCKS_PER_SM = 32
SHARED_PER_SM = 228 * 1024
SHARED_RESERVED_PER_BLOCK = 1024

# Threads per block of the kernels without __launch_bounds__, as their plans launch them.
LAUNCH_THREADS = {
    # plans/batch_norm.h: kBnThreads (a 2-D block of 256 in the channels-last and narrow mappings)
    "reduce_channels_first_kernel": 256,
    "reduce_channels_last_kernel": 256,
    "merge_partials_kernel": 256,
    "affine_channels_first_kernel": 256,
    "affine_channels_last_kernel": 256,
    # plans/group_norm.h: kGnThreads
    "group_stats_kernel": 256,
    "group_norm_apply_kernel": 256,
    "group_norm_backward_reduce_kernel": 256,
    "group_norm_grad_input_kernel": 256,
    "group_norm_param_grad_fold_kernel": 256,  # kGnFoldThreads
    "group_stats_tiled_kernel": 256,
    "group_norm_apply_tiled_kernel": 256,
    "group_norm_backward_tiled_kernel": 256,
    "group_norm_grad_input_tiled_kernel": 256,
    # plans/power_norm.h: kPnLanes x kPnRows, kPnThreads
    "power_norm_stats_kernel": 256,
    "power_norm_backward_kernel": 256,
    "power_norm_forward_kernel": 256,
    "sum_partials_kernel": 256,
    "power_norm_backward_finalize_kernel": 256,
    # plans/weight_norm.h: kWnThreads
    "weight_norm_partial_kernel": 512,
    "weight_norm_scale_kernel": 512,
    "weight_norm_grad_kernel": 512,
    "weight_norm_partial_columns_kernel": 512,
    "weight_norm_scale_columns_kernel": 512,
    "weight_norm_grad_columns_kernel": 512,
    # plans/row_norm.h: kRowReduceCols x kRowReduceSplits
    "reduce_param_grad_partials": 256,
}


@dataclass
class KernelResources:
    kernel: str  # demangled, without the parameter list
    registers: int
    stack: int
    static_shared: int
    local: int
    spill_instructions: int  # LDL + STL
    global_loads_128: int
    global_stores_128: int
    global_accesses: int  # every LDG / STG
    generic_loads: int  # LD: reads through a generic address (map_shared_rank's peer shared memory)
    cluster_barriers: int  # UCGABAR_ARV (cluster.sync's arrive)
    max_threads: Optional[int]  # __launch_bounds__
    launch_threads: Optional[int]  # the bound, or the plan's block size (LAUNCH_THREADS)
    blocks_per_sm: Optional[int]
    occupancy: Optional[float]  # resident threads / 2048, at launch_threads


def find_cuobjdump() -> str:
    candidates = [os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "cuobjdump")]
    candidates.append(shutil.which("cuobjdump") or "")
    try:
        import triton

        candidates.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))
    except ImportError:
        pass
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    raise SystemExit("no cuobjdump: install the CUDA toolkit or set CUDA_HOME")


def extension_path() -> str:
    import norm_ext

    if not norm_ext.has_cuda_kernels():
        raise SystemExit("norm_ext was built without its CUDA kernels: rebuild with NORM_EXT_CUDA=1")
    return norm_ext._C.__file__


def _dump(cuobjdump: str, flag: str, binary: str) -> str:
    # Only the sm_90 code: the default build (TORCH_CUDA_ARCH_LIST "8.0;9.0+PTX") also holds each
    # kernel for sm_80, under the same name, with other register counts and spills.
    done = subprocess.run([cuobjdump, "-arch", "sm_90", flag, binary], capture_output=True, text=True)
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise SystemExit(f"cuobjdump {flag} {binary} failed ({detail}): is it a build with NORM_EXT_CUDA=1?")
    return done.stdout


def parse_res_usage(text: str) -> Dict[str, Dict[str, int]]:
    usage, name = {}, None
    for line in text.splitlines():
        found = re.match(r"\s*Function (\S+):", line)
        if found:
            name = found.group(1)
        elif name and "REG:" in line:
            usage[name] = {key.lower(): int(v) for key, v in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", line)}
            name = None
    return usage


def parse_sass(text: str) -> Dict[str, Counter]:
    opcodes, current = {}, None
    for line in text.splitlines():
        found = re.match(r"\s*Function : (\S+)", line)
        if found:
            current = opcodes.setdefault(found.group(1), Counter())
            continue
        found = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)", line)
        if found and current is not None:
            current[found.group(1)] += 1
    return opcodes


def parse_max_threads(text: str) -> Dict[str, int]:
    bounds, name, attribute = {}, None, None
    for line in text.splitlines():
        if line.startswith(".nv.info._Z"):
            name = line[len(".nv.info.") :].strip()
        elif "Attribute:" in line:
            attribute = line.split()[-1]
        elif name and attribute == "EIATTR_MAX_THREADS" and "Value:" in line:
            x, y, z = (int(v, 16) for v in line.split()[1:4])
            bounds[name] = x * y * z
            attribute = None
    return bounds


def demangle(names: List[str]) -> Dict[str, str]:
    cxxfilt = shutil.which("c++filt")
    if cxxfilt is None:
        return {n: n for n in names}
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    readable = [re.sub(r"^void ", "", line.split("(")[0]) for line in out.splitlines()]
    return dict(zip(names, readable))


def blocks_per_sm(registers: int, static_shared: int, threads: int) -> int:
    warps = -(-threads // 32)
    regs_per_warp = -(-max(registers, 1) * 32 // REG_ALLOC_UNIT) * REG_ALLOC_UNIT
    by_registers = (REGS_PER_SM // regs_per_warp) // warps
    by_shared = SHARED_PER_SM // (static_shared + SHARED_RESERVED_PER_BLOCK)
    by_threads = MAX_THREADS_PER_SM // (warps * 32)
    return min(by_registers, by_shared, by_threads, MAX_BLOCKS_PER_SM)


def base_name(kernel: str) -> str:
    """A kernel's name without template arguments or namespace."""
    return kernel.split("<")[0].split("::")[-1]


def count(opcodes: Counter, pattern: str) -> int:
    return sum(n for op, n in opcodes.items() if re.fullmatch(pattern, op))


def kernel_resources(binary: str) -> List[KernelResources]:
    cuobjdump = find_cuobjdump()
    usage = parse_res_usage(_dump(cuobjdump, "-res-usage", binary))
    sass = parse_sass(_dump(cuobjdump, "-sass", binary))
    bounds = parse_max_threads(_dump(cuobjdump, "-elf", binary))
    names = demangle(sorted(usage))
    rows = []
    for mangled, u in usage.items():
        ops = sass.get(mangled, Counter())
        kernel = names[mangled].replace("norm_ext::cuda_backend::", "")
        threads = bounds.get(mangled) or LAUNCH_THREADS.get(base_name(kernel))
        blocks = blocks_per_sm(u["reg"], u["shared"], threads) if threads else None
        rows.append(
            KernelResources(
                kernel=kernel,
                registers=u["reg"],
                stack=u["stack"],
                static_shared=u["shared"],
                local=u["local"],
                spill_instructions=count(ops, r"(LDL|STL)(\..*)?"),
                global_loads_128=count(ops, r"LDG\.E\.128(\..*)?"),
                global_stores_128=count(ops, r"STG\.E\.128(\..*)?"),
                global_accesses=count(ops, r"(LDG|STG)(\..*)?"),
                generic_loads=count(ops, r"LD(\..*)?"),
                cluster_barriers=count(ops, r"UCGABAR_ARV"),
                max_threads=bounds.get(mangled),
                launch_threads=threads,
                blocks_per_sm=blocks,
                occupancy=None if blocks is None else blocks * threads / MAX_THREADS_PER_SM,
            )
        )
    return sorted(rows, key=lambda r: r.kernel)


def write(rows: List[KernelResources], out: str, binary: str) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "resources.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    columns = ["kernel", "regs", "stack", "static smem", "spills (LDL+STL)", "LDG.128", "STG.128", "LDG+STG"]
    columns += ["LD (DSMEM)", "cluster barriers", "max threads", "launch threads", "blocks/SM", "occupancy"]
    header = "| " + " | ".join(columns) + " |"
    lines = [
        "# Kernel resources, sm_90",
        "",
        f"From `{os.path.basename(binary)}` by `python benchmarks/kernel_resources.py`; occupancy on an H200 at",
        "the block size the kernel launches with: its `__launch_bounds__` (max threads), else its plan's.",
        "The occupancy budget of each family, and why: tests/test_kernel_resources.py.",
        "",
        header,
        "|" + "---|" * len(columns),
    ]
    for r in rows:
        occupancy = "" if r.occupancy is None else f"{r.occupancy:.0%}"
        lines.append(
            f"| `{r.kernel}` | {r.registers} | {r.stack} | {r.static_shared} | {r.spill_instructions} | "
            f"{r.global_loads_128} | {r.global_stores_128} | {r.global_accesses} | {r.generic_loads} | "
            f"{r.cluster_barriers} | {r.max_threads or ''} | {r.launch_threads or ''} | {r.blocks_per_sm or ''} | "
            f"{occupancy} |"
        )
    with open(os.path.join(out, "resources.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--so", help="the extension to read (default: the installed norm_ext._C)")
    parser.add_argument("--out", default="benchmarks/results/sm90-kernel-resources")
    args = parser.parse_args(argv)
    binary = args.so or extension_path()
    rows = kernel_resources(binary)
    if not rows:
        raise SystemExit(f"{binary} holds no sm_90 kernels")
    write(rows, args.out, binary)
    spilling = [r for r in rows if r.spill_instructions or r.local]
    print(f"{len(rows)} kernels, {len(spilling)} with spills, written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
