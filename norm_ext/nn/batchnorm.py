"""BatchNorm, SyncBatchNorm and MaskedBatchNorm1d backed by norm_ext's kernels.

The classes subclass torch.nn's (BatchNorm1d/2d/3d, SyncBatchNorm, or the common _BatchNorm base),
so parameters, buffers, state_dict keys and ``isinstance`` checks are torch's; only the forward
changes. Unlike torch's, the forward never reads a value on the host: ``momentum=None`` (the
cumulative average) divides by ``num_batches_tracked`` as a tensor.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from .. import distributed
from .. import functional as F

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchNormNd",
    "SyncBatchNorm",
    "MaskedBatchNorm1d",
    "convert_sync_batchnorm",
    "revert_sync_batchnorm",
]


def _module_forward(
    module: _BatchNorm,
    input: Tensor,
    *,
    sync: bool = False,
    process_group: Optional[Any] = None,
    pad_mask: Optional[Tensor] = None,
) -> Tensor:
    momentum = 0.0 if module.momentum is None else module.momentum
    if module.training and module.track_running_stats and module.num_batches_tracked is not None:
        module.num_batches_tracked.add_(1)
        if module.momentum is None:
            momentum = 1.0 / module.num_batches_tracked
    use_batch_stats = module.training or (module.running_mean is None and module.running_var is None)
    use_buffers = not module.training or module.track_running_stats
    # As in torch.nn.SyncBatchNorm, only training-mode batch statistics are synchronised; eval never
    # runs a collective.
    group_name = distributed.sync_group_name(process_group) if sync and use_batch_stats and module.training else None
    if group_name is not None:
        channels = input.shape[1] if input.dim() > 1 else 0
        distributed.check_ranks_agree(module, type(module).__name__, input, channels, group_name)
    return F._batch_norm(
        input,
        module.running_mean if use_buffers else None,
        module.running_var if use_buffers else None,
        module.weight,
        module.bias,
        use_batch_stats,
        momentum,
        module.eps,
        group_name=group_name,
        pad_mask=pad_mask,
    )


class BatchNorm1d(torch.nn.BatchNorm1d):
    """:class:`torch.nn.BatchNorm1d` ((N, C) or (N, C, L) input) with norm_ext's kernels."""

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        return _module_forward(self, input)


class BatchNorm2d(torch.nn.BatchNorm2d):
    """:class:`torch.nn.BatchNorm2d` with norm_ext's kernels; channels_last input stays channels_last."""

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        return _module_forward(self, input)


class BatchNorm3d(torch.nn.BatchNorm3d):
    """:class:`torch.nn.BatchNorm3d` with norm_ext's kernels; channels_last_3d input keeps its layout."""

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        return _module_forward(self, input)


class BatchNormNd(_BatchNorm):
    """BatchNorm for any (N, C, *) input of 2 to 5 dimensions: what :func:`revert_sync_batchnorm`
    produces, since a SyncBatchNorm does not know its input's rank."""

    def _check_input_dim(self, input: Tensor) -> None:
        if not 2 <= input.dim() <= 5:
            raise ValueError(f"expected 2D to 5D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        return _module_forward(self, input)


class _GroupBatchNorm(_BatchNorm):
    """BatchNorm whose statistics may be merged over ``process_group``: torch.nn.SyncBatchNorm's
    constructor."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: Optional[float] = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Optional[Any] = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self.process_group = process_group


class SyncBatchNorm(_GroupBatchNorm):
    """:class:`torch.nn.SyncBatchNorm` with norm_ext's kernels, on CPU (gloo) as well as CUDA (NCCL).

    In training mode the batch statistics are those of the whole ``process_group`` (default: the
    world): one all_gather of (count, mean, m2) per forward and one all_reduce of two per-channel
    sums per backward, no host synchronisation, traceable by ``torch.compile(fullgraph=True)``.
    Ranks may hold different batch sizes and spatial sizes, or an empty batch. Without an
    initialised process group, or in a group of one rank, it is plain BatchNorm. In eval mode no
    collective runs.

    Weight and bias gradients are each rank's local sums, as in torch: wrap the model in
    DistributedDataParallel (which averages gradients) as with torch.nn.SyncBatchNorm.

    It mirrors torch.nn.SyncBatchNorm (constructor, attributes, state_dict keys) but does not
    subclass it: DistributedDataParallel rejects torch.nn.SyncBatchNorm instances in CPU modules.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        if input.size(1) == 0:
            raise ValueError("SyncBatchNorm number of input channels should be non-zero")
        return _module_forward(self, input, sync=True, process_group=self.process_group)

    @classmethod
    def convert_sync_batchnorm(cls, module: torch.nn.Module, process_group: Optional[Any] = None) -> torch.nn.Module:
        """See :func:`norm_ext.convert_sync_batchnorm`."""
        return convert_sync_batchnorm(module, process_group)


class MaskedBatchNorm1d(_GroupBatchNorm):
    """BatchNorm over the channel dimension of a padded sequence batch.

    ``forward(input, pad_mask)`` takes ``input`` of shape (B, T, C) and a (B, T) bool ``pad_mask``
    (True = padding). Statistics come from the valid tokens only (merged across ``process_group``
    when one is given, with the same two collectives as :class:`SyncBatchNorm`); padded positions
    get output 0 and gradient 0. The result equals BatchNorm1d applied to the packed valid tokens.
    A rank (or a batch) whose tokens are all padding is handled; its running stats stay unchanged
    when the whole group has no valid token. Buffers and state_dict are BatchNorm1d's.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 3:
            raise ValueError(f"MaskedBatchNorm1d: expected input of shape (B, T, C), got {input.dim()}D input")

    def forward(self, input: Tensor, pad_mask: Optional[Tensor] = None) -> Tensor:
        self._check_input_dim(input)
        batch, steps, channels = input.shape
        if channels != self.num_features:
            raise ValueError(f"MaskedBatchNorm1d: expected {self.num_features} channels (last dim), got {channels}")
        rows_mask = None
        if pad_mask is not None:
            if pad_mask.dtype != torch.bool:
                raise TypeError(f"MaskedBatchNorm1d: pad_mask must be a bool tensor, got {pad_mask.dtype}")
            if tuple(pad_mask.shape) != (batch, steps):
                expected = (batch, steps)
                raise ValueError(
                    f"MaskedBatchNorm1d: pad_mask must have shape (B, T) = {expected}, got {tuple(pad_mask.shape)}"
                )
            rows_mask = pad_mask.reshape(-1)
        sync = self.process_group is not None
        rows = input.reshape(batch * steps, channels)
        out = _module_forward(self, rows, sync=sync, process_group=self.process_group, pad_mask=rows_mask)
        return out.view(batch, steps, channels)


def _move_state(src: torch.nn.Module, dst: torch.nn.Module) -> torch.nn.Module:
    # The same Parameter and buffer objects move over, so optimizer state, requires_grad, device and
    # dtype are kept; dst was built on the meta device and holds nothing of its own.
    dst.weight, dst.bias = src.weight, src.bias
    dst.running_mean, dst.running_var = src.running_mean, src.running_var
    dst.num_batches_tracked = src.num_batches_tracked
    dst.train(src.training)
    if hasattr(src, "qconfig"):
        dst.qconfig = src.qconfig
    return dst


def convert_sync_batchnorm(module: torch.nn.Module, process_group: Optional[Any] = None) -> torch.nn.Module:
    """Replaces every BatchNorm*d (torch's or norm_ext's, and torch.nn.SyncBatchNorm) in ``module``
    with :class:`norm_ext.nn.SyncBatchNorm` over ``process_group``, as
    :meth:`torch.nn.SyncBatchNorm.convert_sync_batchnorm` does. Parameters and buffers are the same
    objects afterwards. MaskedBatchNorm1d is left alone (it takes its own process_group)."""
    out = module
    convertible = isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
    if convertible and not isinstance(module, (MaskedBatchNorm1d, SyncBatchNorm)):
        out = SyncBatchNorm(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
            process_group,
            device="meta",
        )
        _move_state(module, out)
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child, process_group))
    return out


def revert_sync_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """Replaces every SyncBatchNorm (norm_ext's or torch's) with :class:`norm_ext.nn.BatchNormNd`,
    for single-device use or export. Parameters and buffers are the same objects afterwards."""
    out = module
    if isinstance(module, (SyncBatchNorm, torch.nn.SyncBatchNorm)):
        out = BatchNormNd(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats, device="meta"
        )
        _move_state(module, out)
    for name, child in module.named_children():
        out.add_module(name, revert_sync_batchnorm(child))
    return out
