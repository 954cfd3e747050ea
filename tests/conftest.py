"""Devices the tests run on, and the SIMT backend's switch.

Every parity test takes a ``device`` parameter from DEVICES:
  - ``cpu``: the CPU kernels;
  - ``simt``: the CUDA kernels, compiled for the host and run on CPU fibers (norm_ext.simt), on CPU
    tensors; the test body is the same, the ops dispatch to the CUDA kernels for its duration;
  - ``cuda``: the CUDA kernels on a GPU, where one exists.
Tests of paths only the GPU kernels have take GPU_DEVICES. ``pytest -k simt`` runs every test that
executes a CUDA kernel on the SIMT backend.

NORM_EXT_SIMT_REQUIRE=1 makes a missing SIMT backend, or a skipped SIMT test, an error (CI sets it);
=checked also requires the checked build and lets no SIMT test skip.
"""

import os

import pytest
import torch

import norm_ext
from norm_ext import simt

CUDA_SKIP_REASON = "no CUDA GPU visible" if not torch.cuda.is_available() else "norm_ext was built without CUDA kernels"
HAVE_CUDA = torch.cuda.is_available() and norm_ext.has_cuda_kernels()
needs_cuda = pytest.mark.skipif(not HAVE_CUDA, reason=CUDA_SKIP_REASON)

SIMT_REQUIRED = os.environ.get("NORM_EXT_SIMT_REQUIRE", "")
HAVE_SIMT = simt.available()
CHECKED_SIMT = HAVE_SIMT and simt.flavour() == "checked"
if SIMT_REQUIRED and not HAVE_SIMT:
    raise RuntimeError(f"NORM_EXT_SIMT_REQUIRE is set but {simt.unavailable_reason()}")
if SIMT_REQUIRED == "checked" and not CHECKED_SIMT:
    raise RuntimeError(
        "NORM_EXT_SIMT_REQUIRE=checked but this is the plain SIMT build (build with NORM_EXT_SIMT=checked)"
    )

needs_simt = pytest.mark.skipif(not HAVE_SIMT, reason=simt.unavailable_reason() or "SIMT backend present")
CHECKED_ONLY_REASON = "needs the checked SIMT build (NORM_EXT_SIMT=checked)"
needs_checked_simt = pytest.mark.skipif(not CHECKED_SIMT, reason=CHECKED_ONLY_REASON)

SIMT = pytest.param("cpu", id="simt", marks=[needs_simt, pytest.mark.simt])
CUDA = pytest.param("cuda", marks=needs_cuda)
DEVICES = ["cpu", SIMT, CUDA]
GPU_DEVICES = [SIMT, CUDA]


def on_simt(request) -> bool:
    """Whether the running test executes the CUDA kernels on the SIMT backend."""
    return request.node.get_closest_marker("simt") is not None


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _simt_backend(request):
    """Serves the ops with the SIMT backend during a ``simt`` test, under a random schedule whose seed
    follows from NORM_EXT_SIMT_SEED and the test's id (so a failure reproduces with the same seed)."""
    if not on_simt(request):
        yield
        return
    with simt.serving("random", simt.seed_for(request.node.nodeid)):
        yield


def pytest_report_header(config):
    if not HAVE_SIMT:
        return f"SIMT backend: none ({simt.unavailable_reason()})"
    return (
        f"SIMT backend: {simt.flavour()} build, random schedules from NORM_EXT_SIMT_SEED="
        f"{os.environ.get('NORM_EXT_SIMT_SEED', '0')}"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not SIMT_REQUIRED or not report.skipped or item.get_closest_marker("simt") is None:
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if SIMT_REQUIRED != "checked" and CHECKED_ONLY_REASON in reason:
        return
    report.outcome = "failed"
    report.longrepr = f"a SIMT test skipped under NORM_EXT_SIMT_REQUIRE={SIMT_REQUIRED}: {reason}"
