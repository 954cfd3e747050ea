"""The sm_90 machine code of the CUDA kernels, read from the built extension by cuobjdump
(benchmarks/kernel_resources.py): the vector paths load and store with 128-bit instructions, the
cluster kernels synchronise their cluster and read peers' shared memory, and no kernel spills beyond
the ones listed. Needs a build with the CUDA kernels (CI builds them for sm_90); no GPU."""

import importlib.util
import os
import re

import pytest

import norm_ext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "kernel_resources", os.path.join(ROOT, "benchmarks", "kernel_resources.py")
)
kernel_resources = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kernel_resources)

pytestmark = pytest.mark.skipif(
    not norm_ext.has_cuda_kernels(), reason="norm_ext built without its CUDA kernels (NORM_EXT_CUDA=0)"
)

# Instantiations that spill: one 4-byte row-loop invariant of the fp64 streaming backward, stored once
# before the row loop and reloaded once per row from L1 (SASS in
# benchmarks/results/sm90-kernel-resources/). ptxas holds it to 64 registers for two 512-thread blocks
# per SM; allowing one block removes the spill but halves the warps that hide its latency. A new
# spill, or a listed one gone, fails the test, so that the list stays exact.
KNOWN_SPILLS = {
    "row_norm_bwd_stream<double, double, 1>",
}

# Kernels whose last template argument is the vector width; those that write rows store vectors too.
VECTOR_KERNELS = re.compile(r"(row_norm_(fwd|bwd)_\w+|affine_channels_first_kernel)<.*, (\d+)>")
ROW_WRITING = re.compile(
    r"row_norm_(fwd_reg|fwd_cluster|fwd_stream|bwd_reg|bwd_cluster|bwd_stream)<|affine_channels_first"
)


@pytest.fixture(scope="module")
def kernels():
    try:
        kernel_resources.find_cuobjdump()
    except SystemExit as missing:
        pytest.skip(str(missing))
    rows = kernel_resources.kernel_resources(norm_ext._C.__file__)
    assert len(rows) > 100, [r.kernel for r in rows]
    return {r.kernel: r for r in rows}


def test_vector_paths_use_128_bit_global_accesses(kernels):
    vector = {name: r for name, r in kernels.items() if (m := VECTOR_KERNELS.fullmatch(name)) and int(m.group(3)) > 1}
    assert len(vector) > 40
    for name, r in vector.items():
        assert r.global_loads_128 > 0, f"{name}: no 128-bit global load"
        if ROW_WRITING.match(name):
            assert r.global_stores_128 > 0, f"{name}: no 128-bit global store"


def test_cluster_kernels_use_distributed_shared_memory(kernels):
    cluster = [name for name in kernels if name.startswith("row_norm_") and "_cluster<" in name]
    assert len(cluster) == 12
    for name in cluster:
        r = kernels[name]
        assert r.cluster_barriers > 0, f"{name}: no cluster barrier"
        assert r.generic_loads > 0, f"{name}: no load from a peer block's shared memory"
    for name, r in kernels.items():
        if name not in cluster:
            assert r.cluster_barriers == 0, f"{name}: a cluster barrier outside the cluster kernels"


def test_no_kernel_spills_beyond_the_known(kernels):
    spilling = {name for name, r in kernels.items() if r.spill_instructions or r.local}
    assert spilling == KNOWN_SPILLS


def test_occupancy_model():
    # 512 threads of 128 registers fill half the register file: one block; 64 registers, two.
    assert kernel_resources.blocks_per_sm(128, 1168, 512) == 1
    assert kernel_resources.blocks_per_sm(64, 1168, 512) == 2
    # Registers round up to 8 per thread (256 per warp): 65 takes what 72 does.
    assert kernel_resources.blocks_per_sm(65, 0, 256) == kernel_resources.blocks_per_sm(72, 0, 256) == 3
    # Shared memory, with the 1 KB reserved per block, can be the limit.
    assert kernel_resources.blocks_per_sm(32, 100 * 1024, 128) == 2


# Theoretical occupancy (resident threads / 2048 on an H200 SM, at the block size each kernel launches
# with) that each family's design needs, and why. The first pattern a kernel matches applies.
OCCUPANCY_BUDGETS = [
    # Rows held in registers so that x is read once: up to 64 fp32 values per thread forward at the
    # 512-thread bound leave room for one block per SM. Its 16 warps each issue their row's 8
    # independent 128-bit loads before the first reduction: 16 x 32 x 8 x 16 B = 64 KB in flight per
    # SM, above the ~36 KB that an H200's 4.8 TB/s over ~1 us of latency needs per SM. Shorter rows
    # launch smaller blocks and hold more of them.
    (r"row_norm_(fwd|bwd)_(reg|cluster)<", 0.25),
    # Streaming: nothing held across the row, so latency is hidden by warps alone.
    (r"row_norm_(fwd_stream|bwd_stream|bwd_row_sums)<|reduce_param_grad_partials<", 0.5),
    # fp64 reductions (Welford states of three doubles): a correctness path, not a bandwidth one.
    # GroupNorm's tiled apply and grad_input hold a group's statistics and three doubles of the merge.
    (r"(reduce_channels_first|group_norm_backward_reduce|group_norm_(apply|grad_input)_tiled)_kernel<.*double", 0.25),
    # BatchNorm, GroupNorm, PowerNorm and weight norm: streaming reductions and element-wise maps
    # with nothing held per thread but a few accumulators; half the SM's warps hide the latency
    # (__launch_bounds__ holds the two widest reductions to 64 registers).
    (
        r"(reduce_channels_(first|last)|merge_partials|affine_channels_(first|last)|group_stats|group_norm_apply"
        r"|group_norm_backward_reduce|group_norm_grad_input|group_norm_param_grad_fold"
        r"|group_(stats|norm_apply|norm_backward|norm_grad_input)_tiled"
        r"|power_norm_(stats|backward|forward|backward_finalize)|sum_partials|weight_norm_(partial|scale|grad)(_columns)?)"
        r"_kernel<",
        0.5,
    ),
]


def test_every_kernel_meets_its_occupancy_budget(kernels):
    below = []
    for name, r in kernels.items():
        budget = next((b for pattern, b in OCCUPANCY_BUDGETS if re.match(pattern, name)), None)
        assert budget is not None, f"{name}: no occupancy budget"
        assert r.launch_threads, f"{name}: launch block size unknown (kernel_resources.LAUNCH_THREADS)"
        if r.occupancy < budget:
            below.append(f"{name}: {r.occupancy:.1%} < {budget:.0%} ({r.registers} registers)")
    assert not below, below
