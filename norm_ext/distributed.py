"""Everything norm_ext exchanges between ranks: SyncBatchNorm's statistics and gradient sums, and
PowerNorm's quadratic-mean statistics. Collectives only: this module knows no norm_ext module (the
model conversions live with the modules, in norm_ext.nn.batchnorm).

Per training step a synchronised batch norm runs exactly two collectives, both through the process
group's own backend (NCCL for CUDA tensors, gloo for CPU tensors):

* forward: one all_gather of each rank's ``(count, mean, m2)`` per channel, packed in one float64
  tensor of ``2C + 1`` values, merged by Chan's formula. Merging (count, mean, m2) rather than
  (mean, invstd) keeps channels whose variance is below eps, and float64 keeps counts exact;
* backward: one all_reduce of the two per-channel sums, ``sum(dy)`` and ``sum(dy * x_hat)``.

PowerNorm runs one all_reduce of its per-channel sum of squares and token count in the forward.
All are functional collectives (``torch.distributed._functional_collectives``): they take and
return tensors, so torch.compile traces them into the graph (``fullgraph=True`` works), and nothing
reads a value on the host. A rank with an empty batch sends count 0 and takes part as usual.

Before its first synchronised forward in each dtype (in eager mode), a module checks that every rank
agrees on the channel count and the dtype (:func:`check_ranks_agree`: one all_gather of a fixed size,
read on the host that once): ranks that disagree would otherwise exchange buffers of different sizes,
which gloo answers by aborting the process and NCCL by hanging or by merging garbage.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Dict, Iterator, Optional, Set, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

if dist.is_available():
    from torch.distributed import _functional_collectives as funcol

__all__ = [
    "sync_group_name",
    "check_ranks_agree",
    "all_gather_stats",
    "all_reduce_sums",
    "count_collectives",
]


def sync_group_name(process_group: Optional[dist.ProcessGroup] = None) -> Optional[str]:
    """The name of the group to synchronise over (the default group when ``process_group`` is None),
    or None when there is nobody to synchronise with: torch.distributed unavailable or not
    initialised, or a group of one rank. None makes SyncBatchNorm plain BatchNorm."""
    if not dist.is_available() or not dist.is_initialized():
        return None
    group = process_group if process_group is not None else dist.group.WORLD
    if dist.get_world_size(group) <= 1:
        return None
    return group.group_name


def _all_gather(t: Tensor, group_name: str) -> Tensor:
    # all_gather_single supersedes all_gather_tensor in newer torch; both trace under torch.compile.
    gather = getattr(funcol, "all_gather_single", None) or funcol.all_gather_tensor
    return gather(t, 0, group_name)


_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# owner (a module) -> the (group, channels, dtype) its ranks have been found to agree on.
_AGREED: weakref.WeakKeyDictionary[object, Set[tuple]] = weakref.WeakKeyDictionary()


def check_ranks_agree(owner: object, what: str, input: Tensor, channels: int, group_name: str) -> None:
    """Raises ValueError on every rank of the group when the ranks differ in ``channels`` or in the
    dtype of ``input``, naming each rank's. One all_gather of two values, read on the host, once per
    ``owner`` and (group, channels, dtype) in eager mode; skipped under torch.compile, whose graph
    cannot read a value on the host. Every rank calls it at the same point of the same model, so the
    ranks that disagree still meet in this collective of a fixed size."""
    if torch.compiler.is_compiling():
        return
    agreed = _AGREED.setdefault(owner, set())
    key = (group_name, channels, input.dtype)
    if key in agreed:
        return
    code = _DTYPES.index(input.dtype) if input.dtype in _DTYPES else -1
    local = torch.tensor([channels, code], dtype=torch.float64, device=input.device)
    ranks = _all_gather(local, group_name).view(-1, 2).tolist()
    if any(rank != ranks[0] for rank in ranks):
        described = ", ".join(
            f"rank {i}: {int(c)} channels of {_DTYPES[int(d)] if d >= 0 else 'an unsupported dtype'}"
            for i, (c, d) in enumerate(ranks)
        )
        raise ValueError(f"{what}: the ranks of the process group disagree on the channel count or dtype ({described})")
    agreed.add(key)


def merge_stats(counts: Tensor, means: Tensor, m2s: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Chan's formula over the leading (rank) dimension: counts (R,), means/m2s (R, C).

    m2 = sum_r m2_r + sum_r n_r (mean_r - mean)^2, with the deviations taken from the merged mean,
    so no large-offset cancellation occurs. All-empty input gives count 0, mean 0, m2 0.
    """
    total = counts.sum()
    weights = counts.unsqueeze(1)
    mean = (weights * means).sum(0) / total.clamp(min=1)
    m2 = m2s.sum(0) + (weights * (means - mean) ** 2).sum(0)
    return total, mean, m2


def all_gather_stats(
    count: Tensor, mean: Tensor, m2: Tensor, group_name: str, values_per_channel_bound: int
) -> Tuple[Tensor, Tensor, Tensor]:
    """This rank's (count, mean, m2) merged with every rank's in the group: one all_gather.

    ``values_per_channel_bound`` is what the local shape allows (numel / C). Training on a single
    value per channel in the whole group is an error, as in torch; the global count is read on the
    host to check it only when this rank holds at most one value per channel, never on the hot path.
    """
    channels = mean.numel()
    local = torch.cat([count.reshape(1).to(torch.float64), mean.to(torch.float64), m2.to(torch.float64)])
    gathered = _all_gather(local, group_name).view(-1, 2 * channels + 1)
    total, global_mean, global_m2 = merge_stats(
        gathered[:, 0], gathered[:, 1 : channels + 1], gathered[:, channels + 1 :]
    )
    if values_per_channel_bound <= 1 and not torch.compiler.is_compiling() and int(total) == 1:
        raise ValueError("Expected more than 1 value per channel when training, got 1 across the process group")
    return total, global_mean.to(mean.dtype), global_m2.to(mean.dtype)


def all_reduce_sums(sum_dy: Tensor, sum_dy_xhat: Tensor, group_name: str) -> Tuple[Tensor, Tensor]:
    """The backward's per-channel sums over the group: one all_reduce."""
    channels = sum_dy.numel()
    reduced = funcol.all_reduce(torch.cat([sum_dy, sum_dy_xhat]), "sum", group_name)
    return reduced[:channels], reduced[channels:]


# ---------------------------------------------------------------------------------------------------
# PowerNorm (issue 4b): quadratic-mean statistics.
# ---------------------------------------------------------------------------------------------------


def all_reduce_power_norm_stats(sum_sq: Tensor, count: Tensor, group_name: str) -> Tuple[Tensor, Tensor]:
    """Sums the per-channel sum of squares and the valid-token count over the ranks of the group in one
    all_reduce, so that ``sum_sq / count`` is the count-weighted mean of each rank's quadratic mean. A
    functional collective, like SyncBatchNorm's, so torch.compile traces it."""
    packed = funcol.all_reduce(torch.cat([sum_sq, count.reshape(1)]), "sum", group_name)
    return packed[:-1], packed[-1]


@contextmanager
def count_collectives() -> Iterator[Dict[str, int]]:
    """Counts, by name, the collectives launched through torch.distributed or its functional
    collectives while the block runs, in the dict it yields: how the tests and the SyncBatchNorm
    benchmark check the two collectives per training step stated above."""
    counts: Dict[str, int] = {}
    patched = []
    targets = [(dist, ("all_gather", "all_gather_into_tensor", "all_reduce", "broadcast", "reduce_scatter_tensor"))]
    # funcol is imported only where torch.distributed is available (see the top of this module).
    if dist.is_available():
        targets.append((funcol, ("all_gather_single", "all_gather_tensor", "all_reduce")))
    for module, names in targets:
        for name in names:
            original = getattr(module, name, None)
            if original is None:
                continue

            def counted(*args, _original=original, _name=name, **kwargs):
                counts[_name] = counts.get(_name, 0) + 1
                return _original(*args, **kwargs)

            setattr(module, name, counted)
            patched.append((module, name, original))
    try:
        yield counts
    finally:
        for module, name, original in patched:
            setattr(module, name, original)
