"""The CPU kernels' non-temporal-store paths, against float64 references.

The kernels write an output with streaming stores only when it is large (at least half the
last-level cache, which norm_ext caps at 32 MB) and its memory is already mapped in, i.e. when the
allocator recycles a freed block. Neither happens in the other tests: their tensors are small, and
glibc maps large blocks afresh on every call. So each case here runs in a child process that makes
glibc recycle freed memory (as the benchmark's default does), uses outputs of 18 MB or more, and
checks the second call's outputs, whose memory is the first call's. One child per dtype runs every
case (a child's start, importing torch, costs as much as a case) and reports each failing one.
"""

import os
import subprocess
import sys
import textwrap

import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

CHILD = textwrap.dedent(
    """
    import sys
    import torch
    import norm_ext
    from norm_ext import functional as F, reference
    from norm_ext.bench.timing import keep_freed_memory
    from tolerances import BACKWARD, FORWARD, assert_close_to_reference

    keep_freed_memory()
    dtype = getattr(torch, sys.argv[1])
    threads = torch.get_num_threads()  # each case starts with it; one sets 2

    def leaf(t):
        return t.detach().clone().requires_grad_(True)

    def run(case, fn, ref_fn, tensors):
        g = torch.randn_like(fn(*tensors).detach())
        refs = [leaf(t.double()) for t in tensors]
        y_ref = ref_fn(*refs)
        y_ref.backward(g.double())
        for _ in range(2):  # the second call's outputs reuse the first call's memory
            leaves = [leaf(t) for t in tensors]
            y = fn(*leaves)
            y.backward(g)
        assert_close_to_reference(y, y_ref, dtype, FORWARD, case + " output")
        for name, a, r in zip(["input", "weight", "bias"], leaves, refs):
            assert_close_to_reference(a.grad, r.grad, dtype, BACKWARD, case + " grad of " + name)

    def channels_last(x):
        return x.contiguous(memory_format=torch.channels_last)

    def params(c):
        return (torch.rand(c) + 0.5).to(dtype), torch.randn(c).to(dtype)

    def check(case):
        torch.manual_seed(0)
        torch.set_num_threads(threads)
        rows = 4608 if dtype == torch.float32 else 9216
        if case == "layer_norm":
            x = torch.randn(rows, 1024).to(dtype)
            run(case, lambda x, w, b: F.layer_norm(x, (1024,), w, b),
                lambda x, w, b: reference.layer_norm(x, (1024,), w, b), [x, *params(1024)])
        elif case == "rms_norm":
            x = torch.randn(rows, 1024).to(dtype)
            run(case, lambda x, w: F.rms_norm(x, (1024,), w, 1e-6),
                lambda x, w: reference.rms_norm(x, (1024,), w, 1e-6), [x, params(1024)[0]])
        elif case.startswith("batch_norm"):
            x = torch.randn(rows // 288, 72, 64, 64).to(dtype)
            if case.endswith("channels_last"):
                x = channels_last(x)
            run(case, lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
                lambda x, w, b: reference.batch_norm(x, None, None, w, b)[0], [x, *params(72)])
        elif case == "group_norm":
            x = torch.randn(rows // 576, 288, 48, 48).to(dtype)
            run(case, lambda x, w, b: F.group_norm(x, 32, w, b),
                lambda x, w, b: reference.group_norm(x, 32, w, b), [x, *params(288)])
        elif case == "group_norm_channels_last":
            # 36 channels: rows of 144 (fp32) or 72 (bf16) bytes, so most rows start misaligned for
            # the 32-byte streaming stores.
            x = channels_last(torch.randn(rows // 576, 36, 128, 128).to(dtype))
            run(case, lambda x, w, b: F.group_norm(x, 6, w, b),
                lambda x, w, b: reference.group_norm(x, 6, w, b), [x, *params(36)])
        elif case == "group_norm_two_pass":
            # Groups of 32 x 18432 values: too large for one work item, so statistics, then output.
            x = torch.randn(rows // 1152, 64, 128, 144).to(dtype)
            run(case, lambda x, w, b: F.group_norm(x, 2, w, b),
                lambda x, w, b: reference.group_norm(x, 2, w, b), [x, *params(64)])
        elif case == "group_norm_channels_last_two_pass":
            # One sample for two threads: the channels-last passes over the whole batch, not per sample.
            torch.set_num_threads(2)
            x = channels_last(torch.randn(1, 36, 256, rows // 9).to(dtype))
            run(case, lambda x, w, b: F.group_norm(x, 6, w, b),
                lambda x, w, b: reference.group_norm(x, 6, w, b), [x, *params(36)])
        elif case.startswith("weight_norm"):
            dim = int(case[-1])
            v = torch.randn(rows, 1024).to(dtype)
            g = (torch.rand(rows, 1) if dim == 0 else torch.rand(1, 1024)) + 0.5
            run(case, lambda v, g: F.weight_norm(v, g, dim),
                lambda v, g: reference.weight_norm(v, g, dim), [v, g.to(dtype)])
        else:
            raise ValueError(case)

    failures = []
    for case in sys.argv[2:]:
        try:
            check(case)
        except Exception as e:
            failures.append(f"{case}: {type(e).__name__}: {e}")
    sys.exit("\\n".join(failures) or None)
    """
)

CASES = [
    "layer_norm",
    "rms_norm",
    "batch_norm",
    "batch_norm_channels_last",
    "group_norm",
    "group_norm_channels_last",
    "group_norm_two_pass",
    "group_norm_channels_last_two_pass",
    "weight_norm_dim0",
    "weight_norm_dim1",
]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs glibc's mallopt to recycle freed memory")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_streamed_outputs_match_reference(dtype):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS_DIR, os.environ.get("PYTHONPATH", "")]))
    child = subprocess.run(
        [sys.executable, "-c", CHILD, dtype, *CASES], capture_output=True, text=True, env=env, timeout=900
    )
    assert child.returncode == 0, child.stderr[-6000:]
