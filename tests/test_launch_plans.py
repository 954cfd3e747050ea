"""The launch plans' unit tests (cpp_tests/test_launch_plans.cpp): plain C++ against the sm_90
properties of an H100/H200, compiled and run here as ctest runs them in the CMake build."""

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPILER = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


@pytest.mark.skipif(COMPILER is None, reason="no C++ compiler to build cpp_tests/test_launch_plans.cpp")
def test_launch_plans(tmp_path):
    binary = tmp_path / "test_launch_plans"
    source = os.path.join(ROOT, "cpp_tests", "test_launch_plans.cpp")
    build = subprocess.run(
        [COMPILER, "-std=c++20", "-O1", "-I", os.path.join(ROOT, "csrc"), source, "-o", str(binary)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    result = subprocess.run([str(binary)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed, 0 failed" in result.stdout
