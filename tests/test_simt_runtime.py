"""The SIMT runtime's CUDA semantics: warp shuffles as the CUDA Programming Guide describes them, 3-D
thread and block indices, thread-block clusters and distributed shared memory, and schedules."""

import itertools

import pytest
from conftest import CHECKED_SIMT, needs_simt

from norm_ext import simt

pytestmark = [pytest.mark.simt, needs_simt]

MODES = {"idx": 0, "up": 1, "down": 2, "xor": 3}
POISON = -1  # what a lane reads from a source lane outside the mask (undefined on a GPU)
FULL = 0xFFFFFFFF


def _expected_shuffle(mode, mask, arg, width):
    """Each lane's result, from the Programming Guide's rules: lanes form segments of `width`; up and
    down read lane -/+ delta and keep their own value past their segment's start / end; xor reads
    lane ^ mask and keeps its own value for a later segment; idx reads lane srcLane % width of its own
    segment (arg < 0: each lane's srcLane is (7 * lane + 3) % 32)."""
    values = [100 + lane for lane in range(32)]
    out = []
    for lane in range(32):
        if not (mask >> lane) & 1:
            out.append(-2)
            continue
        start = lane // width * width
        end = start + width - 1
        if mode == "up":
            src = lane - arg if lane - arg >= start else lane
        elif mode == "down":
            src = lane + arg if lane + arg <= end else lane
        elif mode == "xor":
            src = lane ^ arg if (lane ^ arg) <= end else lane
        else:
            src_lane = (7 * lane + 3) % 32 if arg < 0 else arg
            src = start + src_lane % width
        out.append(values[src] if (mask >> src) & 1 else POISON)
    return out


SHUFFLE_CASES = [
    (mode, FULL, arg, width)
    for width in (32, 16, 8, 4, 2, 1)
    for mode, args in [("up", (0, 1, 3, 16, 31)), ("down", (0, 1, 3, 16, 31)), ("xor", (1, 2, 5, 16, 31)),
                       ("idx", (0, 5, 31, 37, -1))]
    for arg in args
] + [
    # Half a warp: its own segment of 16, and sources outside the mask, which read poison.
    ("xor", 0x0000FFFF, 1, 16), ("down", 0x0000FFFF, 8, 16), ("down", 0x0000FFFF, 8, 32), ("idx", 0x0000FFFF, 20, 32),
    ("up", 0xFFFF0000, 4, 32), ("idx", 0x55555555, 2, 32),
]  # fmt: skip


@pytest.mark.parametrize(
    "mode,mask,arg,width", SHUFFLE_CASES, ids=[f"{m}-{mask:#x}-{a}-w{w}" for m, mask, a, w in SHUFFLE_CASES]
)
def test_simt_shuffle_semantics(mode, mask, arg, width):
    got = simt._simt.probe_shuffle(MODES[mode], mask, arg, width)
    assert got == _expected_shuffle(mode, mask, arg, width)


@pytest.mark.parametrize("grid,block", [((3, 2, 2), (5, 3, 2)), ((1, 1, 1), (1024, 1, 1)), ((7, 1, 1), (33, 1, 1))])
def test_simt_indices_cover_the_grid_once(grid, block):
    out = simt._simt.probe_indices(grid, block)
    seen = [tuple(out[i : i + 6]) for i in range(0, len(out), 6)]
    expected = [
        (bx, by, bz, tx, ty, tz)
        for bz, by, bx in itertools.product(range(grid[2]), range(grid[1]), range(grid[0]))
        for tz, ty, tx in itertools.product(range(block[2]), range(block[1]), range(block[0]))
    ]
    assert seen == expected


@pytest.mark.parametrize("blocks,cluster", [(8, 2), (8, 4), (16, 8), (32, 16)])
def test_simt_cluster_blocks_read_each_others_shared_memory(blocks, cluster):
    out = simt._simt.probe_cluster(blocks, cluster)
    for block in range(blocks):
        first = block // cluster * cluster
        row = out[block * cluster : (block + 1) * cluster]
        assert row == [1000 * rank + first + rank for rank in range(cluster)], (block, row)


def test_simt_schedules_order_the_threads():
    # Every thread writes its index to one slot between two barriers: the last writer shows the order.
    if CHECKED_SIMT:
        # ...which is a race, and the checked build says so.
        with pytest.raises(RuntimeError, match=r"shared-memory race: .* shared array `last`"):
            simt._simt.probe_schedule(64)
        return

    def last_writer(name, seed=0):
        with simt.schedule(name, seed):
            seen = simt._simt.probe_schedule(64)
        assert len(set(seen)) == 1, seen  # a barrier lies between the writes and the reads
        return seen[0]

    assert last_writer("forward") == 63
    assert last_writer("reverse") == 0
    randoms = {last_writer("random", seed) for seed in range(8)}
    assert len(randoms) > 1
    assert last_writer("random", 5) == last_writer("random", 5)


def test_simt_traffic_is_counted_by_the_checked_build_only():
    # What the checked build counts is tested in tests/test_simt_traffic.py.
    if CHECKED_SIMT:
        with simt.traffic() as counts:
            pass
        assert counts.total() == simt.Traffic(0, 0, 0, 0, 0, 0)
    else:
        with pytest.raises(RuntimeError, match="needs the checked SIMT build"):
            with simt.traffic():
                pass
