"""Cross-rank reductions of normalization statistics (torch.distributed: gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

from typing import Tuple

import torch
import torch.distributed as dist
from torch import Tensor

# ---------------------------------------------------------------------------------------------------
# PowerNorm (issue 4b): quadratic-mean statistics.
# ---------------------------------------------------------------------------------------------------


def power_norm_process_group(process_group: dist.ProcessGroup | None) -> dist.ProcessGroup | None:
    """The group to sync PowerNorm statistics over: ``process_group``, else the default group when
    torch.distributed is initialized with more than one rank, else None (no sync)."""
    if not dist.is_available() or not dist.is_initialized():
        return None
    group = process_group if process_group is not None else dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None


def all_reduce_power_norm_stats(
    sum_sq: Tensor, count: Tensor, process_group: dist.ProcessGroup | None
) -> Tuple[Tensor, Tensor]:
    """Sums the per-channel sum of squares and the valid-token count over the ranks of ``process_group``
    in one all_reduce, so that ``sum_sq / count`` is the count-weighted mean of each rank's quadratic mean."""
    packed = torch.cat([sum_sq, count.reshape(1)])
    dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=process_group)
    return packed[:-1], packed[-1]
