"""Python side of the norm_ext ops: fake kernels (shape logic for torch.compile).

The ops themselves are declared in ``csrc/schema.cpp`` and implemented per backend in C++/CUDA; their
autograd is registered in C++ (``csrc/autograd/``), each backward calling the matching backward op.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

_ops = torch.ops.norm_ext


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _row_stats_like(input: Tensor, normalized_ndim: int) -> Tensor:
    return input.new_empty(input.shape[: input.dim() - normalized_ndim], dtype=_acc_dtype(input.dtype))


def _param_grad_like(param: Optional[Tensor], ref: Tensor) -> Tensor:
    return torch.empty_like(param) if param is not None else ref.new_empty((0,))


# ---------------------------------------------------------------------------------------------------
# Row norms: layer_norm, rms_norm and their fused residual-add forms.
# ---------------------------------------------------------------------------------------------------


@torch.library.register_fake("norm_ext::layer_norm")
def _layer_norm_fake(input, normalized_shape, weight, bias, eps, zero_centered_weight=False, memory_efficient=False):
    stats = _row_stats_like(input, len(normalized_shape))
    return torch.empty_like(input, memory_format=torch.contiguous_format), stats, torch.empty_like(stats)


@torch.library.register_fake("norm_ext::rms_norm")
def _rms_norm_fake(input, normalized_shape, weight, eps, zero_centered_weight=False, memory_efficient=False):
    return torch.empty_like(input, memory_format=torch.contiguous_format), _row_stats_like(input, len(normalized_shape))


def _residual_stream_dtype(residual: Tensor, residual_dtype: Optional[torch.dtype]) -> torch.dtype:
    return residual_dtype if residual_dtype is not None else residual.dtype


@torch.library.register_fake("norm_ext::add_layer_norm")
def _add_layer_norm_fake(
    input,
    residual,
    normalized_shape,
    weight,
    bias,
    eps,
    residual_dtype=None,
    zero_centered_weight=False,
    memory_efficient=False,
):
    stats = _row_stats_like(input, len(normalized_shape))
    out = torch.empty_like(input, memory_format=torch.contiguous_format)
    h = torch.empty_like(out, dtype=_residual_stream_dtype(residual, residual_dtype))
    return out, h, stats, torch.empty_like(stats)


@torch.library.register_fake("norm_ext::add_rms_norm")
def _add_rms_norm_fake(
    input,
    residual,
    normalized_shape,
    weight,
    eps,
    residual_dtype=None,
    zero_centered_weight=False,
    memory_efficient=False,
):
    out = torch.empty_like(input, memory_format=torch.contiguous_format)
    h = torch.empty_like(out, dtype=_residual_stream_dtype(residual, residual_dtype))
    return out, h, _row_stats_like(input, len(normalized_shape))


@torch.library.register_fake("norm_ext::layer_norm_backward")
def _layer_norm_backward_fake(
    grad_out,
    saved,
    normalized_shape,
    mean,
    rstd,
    weight,
    bias,
    zero_centered_weight=False,
    saved_is_output=False,
    grad_residual=None,
):
    grad_input = torch.empty_like(saved, memory_format=torch.contiguous_format)
    return grad_input, _param_grad_like(weight, grad_out), _param_grad_like(bias, grad_out)


@torch.library.register_fake("norm_ext::rms_norm_backward")
def _rms_norm_backward_fake(
    grad_out,
    saved,
    normalized_shape,
    rstd,
    weight,
    zero_centered_weight=False,
    saved_is_output=False,
    grad_residual=None,
):
    grad_input = torch.empty_like(saved, memory_format=torch.contiguous_format)
    return grad_input, _param_grad_like(weight, grad_out)


# ---------------------------------------------------------------------------------------------------
# Weight normalization and PowerNorm.
# ---------------------------------------------------------------------------------------------------


@torch.library.register_fake("norm_ext::weight_norm")
def _weight_norm_fake(v, g, dim):
    w = torch.empty_like(v, memory_format=torch.contiguous_format)
    return w, g.new_empty(g.shape, dtype=_acc_dtype(v.dtype))


@torch.library.register_fake("norm_ext::weight_norm_backward")
def _weight_norm_backward_fake(grad_w, v, g, norm, dim):
    return torch.empty_like(v, memory_format=torch.contiguous_format), torch.empty_like(g)


@torch.library.register_fake("norm_ext::power_norm_stats")
def _power_norm_stats_fake(input, pad_mask):
    acc = _acc_dtype(input.dtype)
    return input.new_empty((input.shape[-1],), dtype=acc), input.new_empty((), dtype=acc)


@torch.library.register_fake("norm_ext::power_norm")
def _power_norm_fake(input, scale, weight, bias, ema_gz, pad_mask, alpha_bkw):
    return torch.empty_like(input, memory_format=torch.contiguous_format)


@torch.library.register_fake("norm_ext::power_norm_backward")
def _power_norm_backward_fake(grad_out, input, scale, weight, ema_gz, pad_mask, alpha_bkw, has_bias):
    grad_input = torch.empty_like(input, memory_format=torch.contiguous_format)
    # The kernels return an empty gradient in the input's dtype for an absent parameter.
    param = weight if weight is not None else input
    grad_weight = param.new_empty((input.shape[-1],)) if weight is not None else input.new_empty((0,))
    grad_bias = param.new_empty((input.shape[-1],)) if has_bias else input.new_empty((0,))
    return grad_input, grad_weight, grad_bias


# ---------------------------------------------------------------------------------------------------
# GroupNorm (and InstanceNorm, which calls it with one group per channel), optional fused SiLU.
# ---------------------------------------------------------------------------------------------------


def _group_norm_memory_format(input: Tensor) -> torch.memory_format:
    # Mirrors group_norm_memory_format in csrc/common/group_norm.h: the layout the kernels keep.
    if input.is_contiguous():
        return torch.contiguous_format
    if input.dim() == 4 and input.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if input.dim() == 5 and input.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


@torch.library.register_fake("norm_ext::group_norm")
def _group_norm_fake(input, num_groups, weight, bias, eps, activation=None):
    out = torch.empty_like(input, memory_format=_group_norm_memory_format(input))
    stats = input.new_empty((input.shape[0], num_groups), dtype=_acc_dtype(input.dtype))
    return out, stats, torch.empty_like(stats)


@torch.library.register_fake("norm_ext::group_norm_backward")
def _group_norm_backward_fake(grad_out, input, num_groups, mean, rstd, weight, bias, activation=None):
    grad_input = torch.empty_like(input, memory_format=_group_norm_memory_format(input))
    return grad_input, _param_grad_like(weight, grad_out), _param_grad_like(bias, grad_out)


# ---------------------------------------------------------------------------------------------------
# Batch norm family: the ops that BatchNorm, SyncBatchNorm and MaskedBatchNorm1d are built from.
# batch_norm_train and batch_norm_elemt have their autograd in C++; the padded and synced training
# forms compose the ops in a torch.autograd.Function (norm_ext/functional.py), because the statistics
# in the middle may be merged across ranks (norm_ext.distributed) between the ops of one forward, and
# likewise the backward's sums.
# ---------------------------------------------------------------------------------------------------


def _channel_vector_like(input: Tensor) -> Tensor:
    return input.new_empty((input.shape[1],), dtype=_acc_dtype(input.dtype))


def _bn_output_like(input: Tensor) -> Tensor:
    # The kernels keep a dense channels-last input's strides and make anything else contiguous.
    if input.dim() > 2 and input.movedim(1, -1).is_contiguous():
        return torch.empty_like(input)
    return torch.empty_like(input, memory_format=torch.contiguous_format)


@torch.library.register_fake("norm_ext::batch_norm_stats")
def _batch_norm_stats_fake(input, pad_mask=None):
    stats = _channel_vector_like(input)
    return input.new_empty((), dtype=torch.int64), stats, torch.empty_like(stats)


@torch.library.register_fake("norm_ext::batch_norm_train")
def _batch_norm_train_fake(input, weight, bias, eps, running_mean=None, running_var=None, momentum=0.1):
    stats = _channel_vector_like(input)
    return _bn_output_like(input), stats, torch.empty_like(stats), torch.empty_like(stats)


@torch.library.register_fake("norm_ext::batch_norm_train_backward")
def _batch_norm_train_backward_fake(grad_out, input, mean, invstd, weight):
    stats = _channel_vector_like(input)
    return _bn_output_like(input), stats, torch.empty_like(stats)


@torch.library.register_fake("norm_ext::batch_norm_elemt")
def _batch_norm_elemt_fake(input, mean, invstd, weight, bias, pad_mask=None):
    return _bn_output_like(input)


@torch.library.register_fake("norm_ext::batch_norm_backward_reduce")
def _batch_norm_backward_reduce_fake(grad_out, input, mean, invstd, pad_mask=None):
    stats = _channel_vector_like(input)
    return stats, torch.empty_like(stats)


@torch.library.register_fake("norm_ext::batch_norm_backward_elemt")
def _batch_norm_backward_elemt_fake(grad_out, input, mean, invstd, weight, mean_dy, mean_dy_xhat, pad_mask=None):
    return _bn_output_like(input)
