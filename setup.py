"""Wheel build for norm_ext.

CUDA is decided from the installed torch (``torch.version.cuda``) and a CUDA toolkit (nvcc), never
from whether a GPU is visible, so a GPU-less build host produces the CUDA kernels too.

Environment:
  NORM_EXT_CUDA=0|1       force a CPU-only build / require CUDA (default: auto).
  NORM_EXT_SIMT=0|1|checked
                          also build norm_ext._simt, the CUDA kernels compiled for the host and run
                          on CPU fibers (csrc/simt); "checked" builds it with clang, AddressSanitizer
                          and the race / uninitialized-read checker (default: 0).
  NORM_EXT_SIMT_CXX       the clang++ of the checked build (default: clang++-19, else clang++).
  NORM_EXT_SIMT_ONLY=1    build norm_ext._simt alone, keeping the norm_ext._C already built (an
                          editable install rebuilds everything it builds from scratch).
  TORCH_CUDA_ARCH_LIST    GPU architectures (default: the visible GPU's, else "8.0;9.0+PTX").
  MAX_JOBS                parallel compile jobs (ninja).
  CUDA_HOME               CUDA toolkit (default: /usr/local/cuda when it has nvcc).
"""

import glob
import importlib.util
import os
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCH_LIST = "8.0;9.0+PTX"


def _locate_cuda_home():
    # torch guesses CUDA_HOME from the nvcc on PATH; a wrapper script in /usr/local/bin then yields
    # /usr/local, which has no lib64 and the link fails. Prefer an explicit or canonical toolkit.
    for candidate in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if candidate and os.path.isfile(os.path.join(candidate, "bin", "nvcc")):
            return candidate
    return None


cuda_home = _locate_cuda_home()
if cuda_home:
    os.environ["CUDA_HOME"] = cuda_home

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _want_cuda():
    request = os.environ.get("NORM_EXT_CUDA", "auto").strip().lower()
    if request not in ("0", "1", "auto"):
        sys.exit(f"norm_ext: NORM_EXT_CUDA must be 0, 1 or unset, got {request!r}")
    have = torch.version.cuda is not None and cuda_home is not None
    if request == "1" and not have:
        why = "torch is a CPU-only build" if torch.version.cuda is None else "no CUDA toolkit (nvcc) found"
        sys.exit(f"norm_ext: NORM_EXT_CUDA=1 but {why}; set CUDA_HOME or install a CUDA build of torch")
    return have and request != "0", request


def _extra_cuda_include_dirs():
    # pip's CUDA wheels ship cuBLAS/cuSPARSE headers that torch's headers include.
    spec = importlib.util.find_spec("nvidia")
    dirs = []
    for base in spec.submodule_search_locations if spec else []:
        dirs += sorted(glob.glob(os.path.join(base, "cu[0-9]*", "include")))
    return dirs


def _want_simt():
    request = os.environ.get("NORM_EXT_SIMT", "0").strip().lower()
    if request not in ("0", "1", "checked"):
        sys.exit(f"norm_ext: NORM_EXT_SIMT must be 0, 1 or checked, got {request!r}")
    return request


def _checked_simt_compiler():
    for name in (os.environ.get("NORM_EXT_SIMT_CXX"), "clang++-19", "clang++"):
        if name and shutil.which(name):
            return name
    sys.exit("norm_ext: NORM_EXT_SIMT=checked needs clang++ (set NORM_EXT_SIMT_CXX; Debian: apt-get install clang-19)")


# The checked SIMT build: AddressSanitizer's instrumentation in callback mode, every access of the
# kernels calling csrc/simt/checker.cpp first (which hands it to AddressSanitizer after its own
# checks), and no vectorizer (it would merge a kernel's scalar accesses into wider ones).
CHECKED_SIMT_FLAGS = [
    "-O1",
    "-g",
    "-fno-omit-frame-pointer",
    "-fno-vectorize",
    "-fno-slp-vectorize",
    "-fsanitize=address",
    "-fsanitize-address-use-after-return=never",
    "-mllvm",
    "-asan-instrumentation-with-call-threshold=0",
    "-mllvm",
    "-asan-memory-access-callback-prefix=__norm_ext_simt_",
    "-DNORM_EXT_SIMT_CHECKED",
]


def _simt_extension(request):
    """norm_ext._simt: the kernels of csrc/cuda compiled for the host (no CUDA toolkit needed)."""
    sources = sorted(glob.glob("csrc/simt/*.cpp"))
    # std::source_location names the kernel line of a failed check. torch picks -std=c++17 where the
    # flags name none (2.11 does; 2.14 picks C++20, which its headers need), so name it here.
    flags = ["-std=c++20", "-DNORM_EXT_SIMT"]
    flags += CHECKED_SIMT_FLAGS if request == "checked" else ["-O2"]
    ext = CppExtension(
        "norm_ext._simt",
        sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": flags},
    )
    ext.cxx = _checked_simt_compiler() if request == "checked" else None
    return ext


class NormExtBuild(BuildExtension):
    """BuildExtension that compiles an extension with its own C++ compiler where it names one."""

    def build_extension(self, ext):
        cxx = getattr(ext, "cxx", None)
        if cxx is None:
            return super().build_extension(ext)
        previous = os.environ.get("CXX")
        os.environ["CXX"] = cxx
        try:
            return super().build_extension(ext)
        finally:
            if previous is None:
                del os.environ["CXX"]
            else:
                os.environ["CXX"] = previous


def _extensions():
    with_cuda, request = _want_cuda()
    simt = _want_simt()
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/autograd/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    # at::parallel_for is a header template whose OpenMP pragma compiles into our objects: without
    # -fopenmp every kernel would silently run on one thread. (Apple clang has no -fopenmp.)
    openmp = [] if sys.platform == "darwin" else ["-fopenmp"]
    cxx = ["-O3", "-fvisibility=hidden", *openmp]
    include_dirs = [os.path.join(ROOT, "csrc")]
    if with_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        include_dirs += _extra_cuda_include_dirs()
        ext = CUDAExtension(
            "norm_ext._C",
            sources,
            include_dirs=list(include_dirs),
            define_macros=[("NORM_EXT_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]},
            extra_link_args=openmp,
        )
    else:
        ext = CppExtension(
            "norm_ext._C",
            sources,
            include_dirs=list(include_dirs),
            extra_compile_args={"cxx": cxx},
            extra_link_args=openmp,
        )
    print(
        "norm_ext build configuration:\n"
        f"  torch {torch.__version__} (CUDA {torch.version.cuda})\n"
        f"  NORM_EXT_CUDA={request} -> {'CUDA + CPU kernels' if with_cuda else 'CPU kernels only'}\n"
        f"  CUDA_HOME={cuda_home}\n"
        f"  TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', '(torch default)') if with_cuda else '-'}\n"
        f"  NORM_EXT_SIMT={simt} -> "
        f"{ {'0': 'no SIMT backend', '1': 'SIMT backend', 'checked': 'checked SIMT backend'}[simt] }\n"
        f"  MAX_JOBS={os.environ.get('MAX_JOBS', '(ninja default)')}\n"
        f"  extra include dirs={include_dirs[1:]}",
        flush=True,
    )
    if not with_cuda and request == "auto":
        print("norm_ext: building without CUDA kernels (CPU-only torch or no nvcc)", flush=True)
    simt_ext = [_simt_extension(simt)] if simt != "0" else []
    if os.environ.get("NORM_EXT_SIMT_ONLY") == "1":
        if not simt_ext:
            sys.exit("norm_ext: NORM_EXT_SIMT_ONLY=1 needs NORM_EXT_SIMT=1 or checked")
        print("norm_ext: NORM_EXT_SIMT_ONLY=1 -> building norm_ext._simt only", flush=True)
        return simt_ext
    return [ext] + simt_ext


setup(
    packages=find_packages(include=["norm_ext", "norm_ext.*"]),
    ext_modules=_extensions(),
    cmdclass={"build_ext": NormExtBuild},
)
