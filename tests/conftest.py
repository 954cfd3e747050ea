import pytest
import torch

import norm_ext

CUDA_SKIP_REASON = "no CUDA GPU visible" if not torch.cuda.is_available() else "norm_ext was built without CUDA kernels"
HAVE_CUDA = torch.cuda.is_available() and norm_ext.has_cuda_kernels()

needs_cuda = pytest.mark.skipif(not HAVE_CUDA, reason=CUDA_SKIP_REASON)

# Every parity test runs on the CPU, and on the GPU where one exists (skipped with the reason).
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
