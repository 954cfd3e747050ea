"""The SIMT backend's checkers, shown able to fail.

Each kernel with a planted bug (csrc/simt/selftest.cpp) must be reported, under every schedule, with a
message that names the kernel, the block, the thread and the address where it applies; its fixed twin
must run clean. A checker that stops catching its bug fails these tests. The race, uninitialized-read
and global out-of-bounds checks are the checked build's (NORM_EXT_SIMT=checked); the others run in
both builds.
"""

import re

import pytest
from conftest import needs_checked_simt, needs_simt

from norm_ext import simt

pytestmark = [pytest.mark.simt, needs_simt]

SCHEDULES = [("forward", 0), ("reverse", 0), ("random", 1), ("random", 2)]
SCHEDULE_IDS = ["forward", "reverse", "random1", "random2"]
THREAD = r"block \(\d+, 0, 0\) thread \(\d+, 0, 0\)"
ADDRESS = r"0x[0-9a-f]+"


def _bug(name, kernel, pattern, checked_only=False):
    marks = [needs_checked_simt] if checked_only else []
    return pytest.param(name, kernel, pattern, marks=marks, id=name)


# (self-test, the kernel the report names, what the report says)
BUGS = [
    _bug("missing_barrier", "neighbour_exchange<false>", rf"shared-memory race: {THREAD} (reads|writes) 4 bytes "
         rf"at {ADDRESS} of shared array `slots`.*{THREAD} (wrote|read) with no barrier between", checked_only=True),
    _bug("global_tail_off_by_one", "copy_tail<true>", rf"out-of-bounds global-memory access: {THREAD} reads 4 bytes "
         rf"at {ADDRESS}: heap memory, 0 bytes after the 400-byte region", checked_only=True),
    _bug("write_write_race", "block_total<true>", rf"global-memory race: {THREAD} writes 4 bytes at {ADDRESS}, "
         rf"which {THREAD} wrote in this launch with no barrier between \(two threads write the same element\)",
         checked_only=True),
    _bug("uninitialized_shared_read", "read_slot<false>", rf"read of uninitialized shared memory: {THREAD} reads 4 "
         rf"bytes at {ADDRESS} of shared array `slots` \(offset 4 of 8 bytes\)", checked_only=True),
    _bug("shared_tail_off_by_one", "shared_tail<true>",
         rf"(out-of-bounds shared-memory access: {THREAD} writes 4 bytes at {ADDRESS} of shared array `stage` "
         r"\(offset 256 of 256 bytes\)"
         r"|block \(0, 0, 0\): shared memory written past the end of `stage` \(256 bytes\))"),
    _bug("partial_warp_full_mask", "warp_sum", rf"{THREAD}: the shuffle at selftest.cpp:\d+ has mask 0xffffffff, "
         r"which names lanes 16,17,.*,31 that this warp does not have \(the block has 48 threads\)"),
    _bug("divergent_barrier", "branch_barrier<true>", rf"{THREAD}: (__syncthreads\(\) at selftest.cpp:\d+ after \d+ "
         r"threads of the block exited|exited while \d+ threads of its block wait at __syncthreads\(\))"),
    _bug("exited_cluster_peer", "cluster_swap<false>", rf"{THREAD}: map_shared_rank at selftest.cpp:\d+ reads the "
         r"shared memory of block \(\d, 0, 0\) \(rank \d of the cluster\), which has exited: a cluster.sync\(\) before "
         r"exit is missing"),
    _bug("misaligned_float4", "vector_load", rf"{THREAD}: misaligned 16-byte vector load at {ADDRESS} "
         r"\(selftest.cpp:\d+\): the address must be a multiple of 16"),
    _bug("shuffle_against_barrier", "shuffle_against_barrier",
         rf"(deadlock: no thread can run, and these wait:\n  {THREAD} at|{THREAD}: divergent)"),
    _bug("trap", "trapping", r"block \(0, 0, 0\) thread \(3, 0, 0\): __trap\(\) at selftest.cpp:\d+"),
]  # fmt: skip

FIXED = [
    "missing_barrier_fixed",
    "global_tail_fixed",
    "single_writer",
    "initialized_shared_read",
    "shared_tail_fixed",
    "full_warps_full_mask",
    "uniform_barrier",
    "cluster_final_sync",
    "aligned_float4",
]

# Launches that the shared launcher refuses before running anything (as cudaLaunchKernel would fail).
INVALID_LAUNCHES = [
    ("too_many_threads", r"block of 1025 threads exceeds 1024"),
    ("empty_grid", r"empty grid \(0, 1, 1\): a wrapper must return before launching on empty input"),
    ("grid_y_too_large", r"grid dimension y = 65536 exceeds the limit 65535"),
    ("dynamic_smem_without_opt_in", r"65536 bytes of shared memory .* more than 49152 without "
     r"cudaFuncAttributeMaxDynamicSharedMemorySize"),
    ("cluster_not_dividing_grid", r"cluster size 2 does not divide grid dimension x = 3"),
    ("non_portable_cluster_without_attribute", r"cluster of 16 blocks exceeds 8 \(more needs "
     r"cudaFuncAttributeNonPortableClusterSizeAllowed\)"),
]  # fmt: skip


def _report(name, schedule=("forward", 0)):
    with simt.schedule(*schedule), pytest.raises(RuntimeError) as info:
        simt.selftest(name)
    return str(info.value)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=SCHEDULE_IDS)
@pytest.mark.parametrize("name,kernel,pattern", BUGS)
def test_simt_checker_reports_planted_bug(name, kernel, pattern, schedule):
    report = _report(name, schedule)
    assert f"norm_ext SIMT: kernel void norm_ext::simt_backend::selftest::{kernel}(" in report or (
        f"norm_ext SIMT: kernel norm_ext::simt_backend::selftest::{kernel}(" in report
    ), report
    assert re.search(pattern, report, re.DOTALL), report
    # The schedule, so that the run reproduces.
    assert f"(schedule {schedule[0]}" in report, report


@pytest.mark.parametrize("schedule", SCHEDULES, ids=SCHEDULE_IDS)
@pytest.mark.parametrize("name", FIXED)
def test_simt_checker_passes_fixed_twin(name, schedule):
    with simt.schedule(*schedule):
        simt.selftest(name)


@pytest.mark.parametrize("name,pattern", INVALID_LAUNCHES, ids=[n for n, _ in INVALID_LAUNCHES])
def test_simt_launch_checks(name, pattern):
    report = _report(name)
    assert "launch of norm_ext::simt_backend::selftest::idle() rejected: " in report, report
    assert re.search(pattern, report), report


# (self-test, kernel, sectors / ideal sectors, the busiest block's bytes over an SM's even share): four
# blocks of 64 threads; float4 loads and float stores of consecutive threads are coalesced, and the
# host's split of a 16-byte load is put back together; floats 32 bytes apart take a sector each, a
# warp's load 32 sectors for the 4 its bytes fill, plus its store's 4 (36 / 8); one block of four
# doing all the copying carries 4 shares.
ACCESS_PATTERNS = [
    ("coalesced_copy", "strided_copy", 1.0, 1.0),
    ("strided_copy", "strided_copy", 36 / 8, 1.0),
    ("aligned_float4", "vector_load", 1.0, 1.0),
    ("lopsided_copy", "lopsided_copy", 1.0, 4.0),
]


@needs_checked_simt
@pytest.mark.parametrize("name,kernel,sectors_over_ideal,share", ACCESS_PATTERNS, ids=[p[0] for p in ACCESS_PATTERNS])
def test_simt_launch_log_sees_coalescing_and_balance(name, kernel, sectors_over_ideal, share):
    with simt.launch_log() as launches:
        simt.selftest(name)
    (launch,) = launches
    assert launch.name == kernel
    assert launch.sectors / launch.ideal_sectors == pytest.approx(sectors_over_ideal)
    even_share = launch.bytes / min(launch.blocks, 132)
    assert launch.busiest_block_bytes / even_share == pytest.approx(share)


def test_simt_every_selftest_is_covered():
    covered = {b.values[0] for b in BUGS} | set(FIXED) | {name for name, _ in INVALID_LAUNCHES}
    covered |= {name for name, *_ in ACCESS_PATTERNS}
    assert covered == set(simt.selftest_names())
