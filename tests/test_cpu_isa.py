"""The CPU kernels' instruction sets: which one runs, and every lower one against float64.

The kernels exist three times (baseline x86-64, AVX2, AVX-512 with BF16) and a process runs the
best one its CPU has, so the other test files check only that one. Here child processes capped by
NORM_EXT_CPU_ISA run the kernel tests (every family's float64 parity, paths, offsets, alignment
and streaming-store cases) on each lower instruction set too.
"""

import os
import platform
import subprocess
import sys

import pytest

import norm_ext

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
ORDER = ["default", "avx2", "avx512"]
KERNEL_TEST_FILES = [
    "test_row_norm.py",
    "test_fused_norms.py",
    "test_group_norm.py",
    "test_batch_norm.py",
    "test_weight_norm.py",
    "test_instance_norm.py",
    "test_power_norm.py",
    "test_streaming_stores.py",
]
KERNEL_TESTS = (
    "(parity or paths or large_offset or misaligned or non_contiguous or optional_affine or alignment or streamed "
    "or training_steps or cache or fp32_params or options) and not cuda and not simt"
)


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def _isa_in_child(cap):
    env = dict(os.environ, NORM_EXT_CPU_ISA=cap)
    code = "import norm_ext; print(norm_ext.cpu_isa())"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_detected_isa_matches_cpu_flags():
    flags = _cpu_flags()
    if flags is None or platform.machine() != "x86_64":
        pytest.skip("no /proc/cpuinfo flags of an x86-64 CPU to compare with")
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16"} <= flags:
        expected = "avx512"
    elif {"avx2", "fma", "f16c"} <= flags:
        expected = "avx2"
    else:
        expected = "default"
    assert _isa_in_child("") == expected


@pytest.mark.parametrize("cap", ORDER)
def test_cap_lowers_never_raises_the_isa(cap):
    best = ORDER.index(_isa_in_child(""))
    assert _isa_in_child(cap) == ORDER[min(best, ORDER.index(cap))]


@pytest.mark.parametrize("isa", ["default", "avx2"])
def test_lower_isa_kernels_match_reference(isa):
    if ORDER.index(norm_ext.cpu_isa()) <= ORDER.index(isa):
        pytest.skip(f"this process already runs the {norm_ext.cpu_isa()} kernels, which the other tests check")
    env = dict(os.environ, NORM_EXT_CPU_ISA=isa)
    assert _isa_in_child(isa) == isa
    files = [os.path.join(TESTS_DIR, f) for f in KERNEL_TEST_FILES]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files, "-k", KERNEL_TESTS]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert " passed" in summary and " failed" not in summary, summary
    assert int(summary.split(" passed")[0].split()[-1]) >= 300, summary
