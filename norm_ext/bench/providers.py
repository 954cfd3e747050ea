"""Implementations compared by the benchmark.

A :class:`Provider` maps op names to a function with norm_ext's (torch.nn.functional's) signature
for that op. Third-party libraries are imported when the benchmark runs; a missing library, a
device it does not support, or an op it does not implement is a skip with a printed reason, never
an import error. None of them is a dependency of norm_ext.
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Dict, List

import torch
import torch.nn.functional as F

from .cases import NORM_EXT_FUNCTION, OPS


@dataclass
class Provider:
    """``functions[op]`` computes ``op``; ``unavailable`` is why the provider cannot run at all. Its
    calls, forward and backward, run inside ``context()``."""

    name: str
    functions: Dict[str, Callable] = field(default_factory=dict)
    unavailable: str | None = None
    cuda_only: bool = False
    op_notes: Dict[str, str] = field(default_factory=dict)
    context: Callable[[], ContextManager] = contextlib.nullcontext

    def skip_reason(self, op: str, device: str) -> str | None:
        if self.unavailable:
            return self.unavailable
        if self.cuda_only and device != "cuda":
            return f"{self.name} runs on CUDA only"
        if op not in self.functions:
            return self.op_notes.get(op, f"{self.name} has no {op}")
        return None


# --- torch eager ------------------------------------------------------------------------------------


def _torch_add_layer_norm(x, residual, shape, weight, bias, eps):
    h = x + residual
    return F.layer_norm(h, shape, weight, bias, eps), h


def _torch_add_rms_norm(x, residual, shape, weight, eps):
    h = x + residual
    return F.rms_norm(h, shape, weight, eps), h


def _torch_group_norm(x, num_groups, weight, bias, eps, activation=None):
    y = F.group_norm(x, num_groups, weight, bias, eps)
    return F.silu(y) if activation == "silu" else y


TORCH_FUNCTIONS: Dict[str, Callable] = {
    "layer_norm": F.layer_norm,
    "rms_norm": F.rms_norm,
    "add_layer_norm": _torch_add_layer_norm,
    "add_rms_norm": _torch_add_rms_norm,
    "batch_norm": F.batch_norm,
    "group_norm": _torch_group_norm,
    "group_norm_silu": _torch_group_norm,
    "instance_norm": F.instance_norm,
    "weight_norm": torch._weight_norm,
}


def torch_eager(device: str) -> Provider:
    return Provider("torch", dict(TORCH_FUNCTIONS))


def _python_frame(fn: Callable) -> Callable:
    """``fn`` called from a Python function: torch 2.6's dynamo cannot take a torch function such as
    F.layer_norm as the frame it compiles (an assertion in its trace rules); 2.11 and 2.14 can."""

    def call(*args, **kwargs):
        return fn(*args, **kwargs)

    return call


def compile_is_dynamic(device: str, dynamic: bool | None = None) -> bool:
    """Whether torch.compile traces dynamic shapes: ``dynamic``, else the default for ``device``. On CUDA:
    static shapes, a compile per case, the best case for inductor. On a CPU: dynamic shapes, so a sweep
    compiles once per op, dtype and grad mode; a static compile costs 10-20 s per shape on a 2-core
    machine, which would dominate the default run."""
    return device != "cuda" if dynamic is None else dynamic


def torch_compile(device: str, dynamic: bool | None = None) -> Provider:
    dynamic = compile_is_dynamic(device, dynamic)
    compiled = {op: torch.compile(_python_frame(fn), dynamic=dynamic) for op, fn in TORCH_FUNCTIONS.items()}
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
    # The bwd pass replays the backward of one stored forward (retain_graph=True), which inductor's
    # donated buffers forbid; they only save memory, not time (older torch has none).
    if hasattr(torch._functorch.config, "donated_buffer"):
        torch._functorch.config.donated_buffer = False
    return Provider("torch.compile", compiled)


# --- norm_ext ---------------------------------------------------------------------------------------


def norm_ext_provider(device: str) -> Provider:
    # norm_ext.functional, not the package root: there norm_ext.weight_norm is the module utility
    # (as torch.nn.utils.weight_norm), while functional.weight_norm is the fused tensor function.
    from .. import functional

    functions, notes = {}, {}
    for op, fn_name in NORM_EXT_FUNCTION.items():
        fn = getattr(functional, fn_name, None)
        if fn is None:
            notes[op] = f"norm_ext.functional.{fn_name} is not in this build"
        else:
            functions[op] = fn
    if device == "simt":
        from .. import simt

        return Provider("norm_ext", functions, op_notes=notes, context=simt.serving)
    return Provider("norm_ext", functions, op_notes=notes)


# --- third-party libraries (CUDA) -------------------------------------------------------------------


def _import(module: str):
    try:
        return importlib.import_module(module), None
    except Exception as e:  # an installed library can fail to import for many reasons (ABI, CUDA)
        first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
        return None, f"{module} not importable ({first_line})"


def _library(name: str, module: str, functions: Callable[[Any], Dict[str, Callable]]) -> Provider:
    """A CUDA-only provider whose functions ``functions(mod)`` builds from the imported ``module``, or
    one that says why it is unavailable."""
    mod, why = _import(module)
    if mod is None:
        return Provider(name, unavailable=why)
    return Provider(name, functions(mod), cuda_only=True)


def apex(device: str) -> Provider:
    return _library(
        "apex",
        "apex.normalization.fused_layer_norm",
        lambda mod: {
            "layer_norm": lambda x, shape, w, b, eps: mod.fused_layer_norm_affine(x, w, b, shape, eps),
            "rms_norm": lambda x, shape, w, eps: mod.fused_rms_norm_affine(x, w, shape, eps),
        },
    )


def liger(device: str) -> Provider:
    return _library(
        "liger",
        "liger_kernel.transformers.functional",
        lambda mod: {
            "layer_norm": lambda x, shape, w, b, eps: mod.liger_layer_norm(x, w, b, eps),
            "rms_norm": lambda x, shape, w, eps: mod.liger_rms_norm(x, w, eps, 0.0, "llama", False),
        },
    )


def quack(device: str) -> Provider:
    mod, why = _import("quack.rmsnorm")
    if mod is None:
        return Provider("quack", unavailable=why)
    functions = {"rms_norm": lambda x, shape, w, eps: mod.rmsnorm(x, w, eps=eps)}
    ln, _ = _import("quack.layernorm")
    if ln is not None and hasattr(ln, "layernorm"):
        functions["layer_norm"] = lambda x, shape, w, b, eps: ln.layernorm(x, w, b, eps=eps)
    return Provider("quack", functions, cuda_only=True, op_notes={"layer_norm": "quack.layernorm not found"})


def transformer_engine(device: str) -> Provider:
    te, why = _import("transformer_engine.pytorch")
    if te is None:
        return Provider("transformer_engine", unavailable=why)

    def module_call(cls, x, w, b, eps):
        # TE exposes modules, not functions: build one around our parameters (cached per tensor).
        key = (cls.__name__, w.data_ptr(), x.shape[-1], x.dtype)
        module = _TE_MODULES.get(key)
        if module is None:
            module = cls(x.shape[-1], eps=eps, params_dtype=x.dtype, device=x.device)
            with torch.no_grad():
                module.weight.copy_(w)
                if b is not None:
                    module.bias.copy_(b)
            _TE_MODULES[key] = module
        return module(x)

    return Provider(
        "transformer_engine",
        {
            "layer_norm": lambda x, shape, w, b, eps: module_call(te.LayerNorm, x, w, b, eps),
            "rms_norm": lambda x, shape, w, eps: module_call(te.RMSNorm, x, w, None, eps),
        },
        cuda_only=True,
    )


_TE_MODULES: Dict[tuple, torch.nn.Module] = {}


def flash_attn_triton(device: str) -> Provider:
    return _library(
        "flash_attn",
        "flash_attn.ops.triton.layer_norm",
        lambda mod: {
            "layer_norm": lambda x, shape, w, b, eps: mod.layer_norm_fn(x, w, b, eps=eps),
            "rms_norm": lambda x, shape, w, eps: mod.rms_norm_fn(x, w, None, eps=eps),
            "add_layer_norm": lambda x, r, shape, w, b, eps: mod.layer_norm_fn(
                x, w, b, residual=r, eps=eps, prenorm=True
            ),
            "add_rms_norm": lambda x, r, shape, w, eps: mod.rms_norm_fn(x, w, None, residual=r, eps=eps, prenorm=True),
        },
    )


PROVIDER_FACTORIES: Dict[str, Callable[[str], Provider]] = {
    "norm_ext": norm_ext_provider,
    "torch": torch_eager,
    "torch.compile": torch_compile,
    "apex": apex,
    "liger": liger,
    "quack": quack,
    "transformer_engine": transformer_engine,
    "flash_attn": flash_attn_triton,
}


def load_providers(names: List[str], device: str, compile_dynamic: bool | None = None) -> List[Provider]:
    """The named providers for ``device`` (cpu, cuda, or simt: norm_ext's CUDA kernels on the SIMT
    backend, everything else on the CPU); ``compile_dynamic`` overrides torch.compile's default."""
    unknown = [n for n in names if n not in PROVIDER_FACTORIES]
    if unknown:
        raise ValueError(f"unknown provider(s) {unknown}; choose from {list(PROVIDER_FACTORIES)}")
    return [torch_compile(device, compile_dynamic) if n == "torch.compile" else PROVIDER_FACTORIES[n](device)
            for n in names]  # fmt: skip


def known_ops() -> List[str]:
    return list(OPS)
