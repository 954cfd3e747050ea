"""What BatchNorm, GroupNorm and weight norm move in global memory, counted per byte by the checked
SIMT build (norm_ext.simt.traffic), against their design (the row norms: test_simt_traffic.py):

* BatchNorm's apply pass reads x once and writes y once, and reads the per-channel coefficients once
  per thread and channel, not per element: all its other reads together stay under half of x's bytes
  at a million elements, where a per-element load of mean, scale and shift would be three times them.
  A training step reads x twice (statistics, then apply).
* GroupNorm's forward reads x twice (statistics, apply) in two launches and writes y once; beyond
  that only the shift value of each group, at most once per thread.
* Weight norm reads v twice (partial sums, rescale) and writes w once, whatever the dim.
"""

import pytest
import torch
from conftest import SIMT, needs_checked_simt

from norm_ext import functional as F
from norm_ext import simt

pytestmark = needs_checked_simt


def _nbytes(t):
    return t.numel() * t.element_size()


@pytest.mark.parametrize("device", [SIMT])
@pytest.mark.parametrize(
    "shape,channels_last",
    [
        pytest.param((1, 16, 256, 256), False, id="nchw"),
        pytest.param((64, 16, 32, 32), True, id="nhwc"),
        pytest.param((65536, 16), False, id="nc"),
    ],
)
def test_batch_norm_apply_reads_coefficients_per_thread(shape, channels_last, device):
    x = torch.randn(shape)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    c = shape[1]
    running_mean, running_var = torch.randn(c), torch.rand(c) + 0.5
    weight, bias = torch.randn(c), torch.randn(c)
    with simt.launch_log() as launches, simt.traffic() as counts:
        y = F.batch_norm(x, running_mean, running_var, weight, bias, training=False)
    assert [launch.name for launch in launches] in (
        ["affine_channels_first_kernel"],
        ["affine_channels_last_kernel"],
    )
    flat_x = x.permute(0, 2, 3, 1) if channels_last else x
    flat_y = y.permute(0, 2, 3, 1) if channels_last else y
    x_read = counts.of(flat_x)
    assert x_read.distinct_read == _nbytes(x) and x_read.reread == 0, x_read
    y_written = counts.of(flat_y)
    assert y_written.distinct_written == _nbytes(y) and y_written.rewritten == 0, y_written
    other_reads = counts.total().read - x_read.read
    assert other_reads <= _nbytes(x) // 2, f"{other_reads} bytes of coefficients for {_nbytes(x)} of x"


@pytest.mark.parametrize("device", [SIMT])
def test_batch_norm_training_reads_x_twice(device):
    x = torch.randn(8, 32, 16, 16)
    with simt.traffic() as counts:
        y = F.batch_norm(x, torch.zeros(32), torch.ones(32), torch.randn(32), torch.randn(32), training=True)
    c = counts.of(x)
    assert c.distinct_read == _nbytes(x) and c.read == 2 * _nbytes(x), c
    assert counts.of(y).distinct_written == _nbytes(y) and counts.of(y).rewritten == 0


@pytest.mark.parametrize("device", [SIMT])
@pytest.mark.parametrize(
    "shape,groups", [((4, 64, 16, 16), 8), ((32, 128, 7, 7), 128), ((1, 32, 64, 64), 1)], ids=["gn", "in", "chunked"]
)
def test_group_norm_forward_traffic(shape, groups, device):
    x = torch.randn(shape)
    with simt.launch_log() as launches, simt.traffic() as counts:
        y = F.group_norm(x, groups, torch.randn(shape[1]), torch.randn(shape[1]))
    assert len(launches) == 2
    c = counts.of(x)
    # Twice, plus the group's first element, which the threads of an item shift its values by (a
    # broadcast): at most one per thread of each launch.
    shift_reads = sum(launch.threads for launch in launches) * x.element_size()
    assert c.distinct_read == _nbytes(x) and 2 * _nbytes(x) <= c.read <= 2 * _nbytes(x) + shift_reads, c
    assert counts.of(y).distinct_written == _nbytes(y) and counts.of(y).rewritten == 0


@pytest.mark.parametrize("device", [SIMT])
@pytest.mark.parametrize("dim", [0, 1, None])
def test_weight_norm_traffic(dim, device):
    v = torch.randn(256, 512)
    g = torch.randn(256, 1) if dim == 0 else torch.randn(1, 512) if dim == 1 else torch.randn(())
    with simt.launch_log() as launches, simt.traffic() as counts:
        w = F.weight_norm(v, g, dim)
    assert len(launches) == 2
    c = counts.of(v)
    assert c.distinct_read == _nbytes(v) and c.read == 2 * _nbytes(v), c
    assert counts.of(w).distinct_written == _nbytes(w) and counts.of(w).rewritten == 0
