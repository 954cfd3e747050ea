"""Every shape class keeps an H200 busy (norm_ext.bench.shape_classes, issue 20 part 5): per launch of
each class, at least one block per SM unless the class says why less work cannot, and (checked build,
which sees the threads' accesses) more than half the launched threads doing work, at every C, the
warps' requests coalesced and no block a tail. The table: benchmarks/results/launch-shapes.md, from
``python -m norm_ext.bench.shape_classes``."""

import functools

import pytest
from conftest import SIMT, needs_checked_simt

from norm_ext.bench import shape_classes as sc

CLASSES = [pytest.param(c, id=c.id) for c in sc.CLASSES]


# One run per class serves both tests: on the checked build a class's launches take seconds.
@functools.cache
def _measure(shape_class):
    return sc.measure(shape_class)


def _problems(rows):
    return [f"{r.kernel} grid {r.grid} block {r.block}: {'; '.join(r.problems())}" for r in rows if r.problems()]


@pytest.mark.parametrize("device", [SIMT])
@pytest.mark.parametrize("shape_class", CLASSES)
def test_launches_fill_the_gpu(shape_class, device):
    rows = _measure(shape_class)
    assert rows, "the class launched no kernel"
    assert not _problems(rows), _problems(rows)


@needs_checked_simt
@pytest.mark.parametrize("device", [SIMT])
@pytest.mark.parametrize("shape_class", CLASSES)
def test_most_threads_work(shape_class, device):
    rows = _measure(shape_class)
    assert all(r.working is not None for r in rows), "the checked build counts the working threads"
    assert not _problems(rows), _problems(rows)


def _row(kernel="k", blocks=sc.H200_SMS, working=1.0, small=None, coalesced=1.0, busiest_share=1.0):
    shape_class = sc.ShapeClass("c", "family", "shape", lambda: None, small)
    total = 1000 * min(blocks, sc.H200_SMS)
    return sc.LaunchRow(
        shape_class,
        kernel,
        (blocks, 1, 1),
        (256, 1, 1),
        1,
        blocks,
        working,
        coalesced,
        total,
        int(busiest_share * 1000),
    )


def test_the_rules_catch_idle_launches():
    assert _row().problems() == []
    assert _row(blocks=sc.H200_SMS - 1).problems() == [f"{sc.H200_SMS - 1} blocks for {sc.H200_SMS} SMs"]
    assert _row(blocks=1, small="one row").problems() == []
    # The old BatchNorm [rows][C] kernel at C = 1: one lane of 32 had a channel.
    assert _row(working=1 / 32).problems() == ["3% of the threads work"]
    assert _row(working=0.5).problems() == ["50% of the threads work"]
    assert _row(kernel="merge_partials_kernel", blocks=1, working=1 / 256).problems() == []
    # Weight norm with dim the last, read along a slice: a warp's floats a row of 1024 apart.
    assert _row(coalesced=1 / 8).problems() == ["requests 12% coalesced"]
    # The row norms' backward storing its dγ/dβ partials a float per lane, four floats apart.
    assert _row(coalesced=0.5).problems() == ["requests 50% coalesced"]
    assert _row(coalesced=0.6).problems() == []
    # GroupNorm's dweight / dbias at 16 channels before the row splits: 16 blocks over every row.
    assert _row(busiest_share=4.0).problems() == ["a block carries 4.0x an SM's share"]
    assert _row(busiest_share=2.0).problems() == []
