"""PowerNorm (Shen et al. 2020, "PowerNorm: Rethinking Batch Normalization in Transformers")."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import distributed, ops  # noqa: F401  (ops registers fake kernels and autograd)

_ops = torch.ops.norm_ext


class PowerNorm(torch.nn.Module):
    """PowerNorm over ``(batch, time, channels)`` input with an optional ``(batch, time)`` bool padding
    mask (True = padding), as the authors' MaskPowerNorm but batch-first.

    GroupScaling first divides every token by its RMS over each of ``group_num`` channel groups (the
    number of attention heads). Training statistics are the per-channel quadratic mean ``psi_B^2`` over
    the non-padding tokens (of all ranks of ``process_group``: the count-weighted mean of each rank's
    quadratic mean; None means the default group when torch.distributed is initialized). For the first
    ``warmup_iters`` steps the output is normalized by ``psi_B``, afterwards by the running ``psi``. The
    running ``psi^2`` (``running_phi``) is a cumulative average during warmup and always an EMA with
    ``alpha_fwd``. The backward is the paper's approximate one, ``grad_x = (g - (1 - alpha_bkw) *
    ema_gz * z) / psi``, where ``ema_gz`` is the running Gamma. In eval mode the running ``psi`` is used
    and the gradient is exact (the running Gamma is neither used nor updated).

    Buffers: ``running_phi`` and ``ema_gz`` (float32, or the dtype the module is cast to; keep them
    float32 for fp16/bf16 input) and ``iters``, the number of training steps taken. State dicts of the
    authors' MaskPowerNorm (buffers shaped (1, C, 1, 1) and (1,)) load too.
    """

    def __init__(
        self,
        num_features: int,
        alpha_fwd: float = 0.9,
        alpha_bkw: float = 0.9,
        eps: float = 1e-5,
        warmup_iters: int = 10000,
        group_num: int = 1,
        process_group: torch.distributed.ProcessGroup | None = None,
        affine: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if num_features <= 0:
            raise ValueError(f"PowerNorm: num_features must be positive, got {num_features}")
        if group_num <= 0 or num_features % group_num != 0:
            raise ValueError(f"PowerNorm: group_num ({group_num}) must divide num_features ({num_features})")
        for name, alpha in (("alpha_fwd", alpha_fwd), ("alpha_bkw", alpha_bkw)):
            if not 0.0 <= alpha <= 1.0:
                raise ValueError(f"PowerNorm: {name} must be in [0, 1], got {alpha}")
        if not eps >= 0.0:
            raise ValueError(f"PowerNorm: eps must be non-negative, got {eps}")
        if warmup_iters < 0:
            raise ValueError(f"PowerNorm: warmup_iters must be non-negative, got {warmup_iters}")
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.alpha_fwd = float(alpha_fwd)
        self.alpha_bkw = float(alpha_bkw)
        self.eps = float(eps)
        self.warmup_iters = int(warmup_iters)
        self.group_num = int(group_num)
        self.process_group = process_group
        self.affine = affine
        if affine:
            self.weight = torch.nn.Parameter(torch.ones(num_features, **factory))
            self.bias = torch.nn.Parameter(torch.zeros(num_features, **factory))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        stat_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        self.register_buffer("running_phi", torch.ones(num_features, device=device, dtype=stat_dtype))
        self.register_buffer("ema_gz", torch.zeros(num_features, device=device, dtype=stat_dtype))
        self.register_buffer("iters", torch.zeros((), device=device, dtype=torch.long))

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, alpha_fwd={self.alpha_fwd}, alpha_bkw={self.alpha_bkw}, "
            f"affine={self.affine}, warmup_iters={self.warmup_iters}, group_num={self.group_num}"
        )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The authors' MaskPowerNorm stores running_phi / ema_gz as (1, C, 1, 1) and iters as (1,).
        for name, shape in (("running_phi", (self.num_features,)), ("ema_gz", (self.num_features,)), ("iters", ())):
            value = state_dict.get(prefix + name)
            if isinstance(value, Tensor) and value.shape != shape and value.numel() == max(1, sum(shape)):
                state_dict[prefix + name] = value.reshape(shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _group_scaling(self, input: Tensor) -> Tensor:
        groups = input.reshape(*input.shape[:-1], self.group_num, self.num_features // self.group_num)
        scaled, _ = _ops.rms_norm(groups, [groups.shape[-1]], None, self.eps)
        return scaled.reshape(input.shape)

    def _batch_quadratic_mean(self, x: Tensor, pad_mask: Tensor | None) -> Tensor:
        # The statistics are constants to autograd: the approximate backward stands in for their gradient.
        sum_sq, count = _ops.power_norm_stats(x.detach(), pad_mask)
        group_name = distributed.sync_group_name(self.process_group)
        if group_name is not None:
            distributed.check_ranks_agree(self, "PowerNorm", x, x.shape[-1], group_name)
            sum_sq, count = distributed.all_reduce_power_norm_stats(sum_sq, count, group_name)
        return sum_sq / count.clamp_min(1.0)

    def forward(self, input: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        if input.dim() != 3 or input.shape[-1] != self.num_features:
            raise ValueError(
                f"PowerNorm: expected input of shape (batch, time, {self.num_features}), got {tuple(input.shape)}"
            )
        x = self._group_scaling(input)
        if not self.training:
            scale = torch.rsqrt(self.running_phi + self.eps)
            return _ops.power_norm(x, scale, self.weight, self.bias, torch.zeros_like(self.ema_gz), pad_mask, 1.0)
        self.iters.add_(1)
        step = self.iters.to(self.running_phi.dtype)
        var = self._batch_quadratic_mean(x, pad_mask).to(self.running_phi.dtype)
        in_warmup = self.iters <= self.warmup_iters
        scale = torch.rsqrt(torch.where(in_warmup, var, self.running_phi) + self.eps)
        phi = torch.where(
            self.iters < self.warmup_iters, self.running_phi * (step - 1) / step + var / step, self.running_phi
        )
        self.running_phi.copy_(self.alpha_fwd * phi + (1.0 - self.alpha_fwd) * var)
        return _ops.power_norm(x, scale, self.weight, self.bias, self.ema_gz, pad_mask, self.alpha_bkw)
