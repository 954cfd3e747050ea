"""What a normalization computes for a given input shape: ``python -m norm_ext explain``.

For a shape and a norm it states which axes are reduced, how many statistics are computed, the
learnable parameter shapes, whether a position's output depends on other tokens or other samples
(hence causality and KV-cache safety), and what changes between training and evaluation. ``--plot``
draws the N x C x (H*W) cube with the region one statistic reduces over shaded (Wu & He, 2018).

Layouts: a 3-D shape is a sequence batch ``(N, T, C)``, channels last, as transformers hold
activations; other shapes are ``(N, C, *spatial)`` as torch's image norms take them. ``layout``
overrides this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Sequence, Tuple

__all__ = ["EXPLAIN_NORMS", "Explanation", "explain", "plot_cube"]

EXPLAIN_NORMS = ("layer", "rms", "batch", "instance", "group", "power", "masked_batch")


@dataclass
class Explanation:
    norm: str
    shape: Tuple[int, ...]
    channel_dim: int
    reduced_dims: Tuple[int, ...]
    statistic: str
    num_statistics: int
    statistics_per_sample: int
    parameter_shapes: List[Tuple[str, Tuple[int, ...]]]
    buffer_shapes: List[Tuple[str, Tuple[int, ...]]]
    depends_on_other_positions: bool
    depends_on_other_samples: str
    causal: str
    kv_cache_safe: str
    train_eval: str
    notes: List[str] = field(default_factory=list)
    num_layers: int | None = None
    norms_per_layer: int = 2
    num_groups: int | None = None

    @property
    def per_sequence_total(self) -> int | None:
        if self.num_layers is None:
            return None
        return self.norms_per_layer * self.num_layers * self.statistics_per_sample

    def dim_names(self) -> List[str]:
        positional = {1: ["T"], 2: ["H", "W"], 3: ["D", "H", "W"]}.get(len(self.shape) - 2)
        positional = iter(positional or [f"S{d}" for d in range(len(self.shape) - 2)])
        return ["N" if d == 0 else "C" if d == self.channel_dim else next(positional) for d in range(len(self.shape))]

    def render(self) -> str:
        names = self.dim_names()
        dims = ", ".join(f"{n}={s}" for n, s in zip(names, self.shape))
        reduced = ", ".join(f"{names[d]} (dim {d}, size {self.shape[d]})" for d in self.reduced_dims)
        kept = [names[d] for d in range(len(self.shape)) if d not in self.reduced_dims]
        if self.num_groups is not None:
            kept.append("group")
        lines = [
            f"{self.norm} norm on input ({dims})",
            f"  reduced axes: {reduced}",
            f"  statistics: one {self.statistic} per ({', '.join(kept) or 'whole tensor'}): "
            + (
                f"{self.num_statistics:,}, shared by the whole batch"
                if 0 in self.reduced_dims
                else f"{self.num_statistics:,} in total, {self.statistics_per_sample:,} per sample"
            ),
        ]
        if self.num_layers is not None and 0 in self.reduced_dims:
            lines.append(
                f"  in a model with {self.num_layers} layers x {self.norms_per_layer} norms: "
                f"{self.norms_per_layer} x {self.num_layers} x {self.num_statistics:,} = "
                f"{self.norms_per_layer * self.num_layers * self.num_statistics:,} per batch, shared by all samples"
            )
        elif self.num_layers is not None:
            lines.append(
                f"  in a model with {self.num_layers} layers x {self.norms_per_layer} norms: "
                f"{self.norms_per_layer} x {self.num_layers} x {self.statistics_per_sample:,} = "
                f"{self.per_sequence_total:,} per sample (sequence), "
                f"{self.per_sequence_total * self.shape[0]:,} per batch"
            )
        params = ", ".join(f"{n} {tuple(s)}" for n, s in self.parameter_shapes) or "none"
        lines.append(f"  learnable parameters: {params}")
        if self.buffer_shapes:
            lines.append("  buffers (not learned): " + ", ".join(f"{n} {tuple(s)}" for n, s in self.buffer_shapes))
        lines += [
            f"  depends on other positions of the same sample: {'yes' if self.depends_on_other_positions else 'no'}",
            f"  depends on other samples in the batch: {self.depends_on_other_samples}",
            f"  causal (a token never sees later tokens): {self.causal}",
            f"  KV-cache safe (decoding one token at a time gives the same output): {self.kv_cache_safe}",
            f"  train vs eval: {self.train_eval}",
        ]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def explain(
    shape: Sequence[int],
    norm: str,
    num_groups: int | None = None,
    num_layers: int | None = None,
    norms_per_layer: int = 2,
    layout: str = "auto",
) -> Explanation:
    """Describe ``norm`` applied to an input of ``shape``. See the module docstring for layouts."""
    shape = tuple(int(s) for s in shape)
    if norm not in EXPLAIN_NORMS:
        raise ValueError(f"norm must be one of {EXPLAIN_NORMS}, got {norm!r}")
    if len(shape) < 2 or any(s <= 0 for s in shape):
        raise ValueError(f"shape must have at least 2 positive dimensions (N, C, ...), got {shape}")
    if layout not in ("auto", "channels_first", "channels_last"):
        raise ValueError(f"layout must be auto, channels_first or channels_last, got {layout!r}")
    channels_last = layout == "channels_last" or (layout == "auto" and len(shape) == 3)
    c_dim = len(shape) - 1 if channels_last else 1
    c = shape[c_dim]
    n = shape[0]
    positional = tuple(d for d in range(1, len(shape)) if d != c_dim)
    positions = math.prod(shape[d] for d in positional)
    affine = [("weight", (c,)), ("bias", (c,))]
    running = [("running_mean", (c,)), ("running_var", (c,))]
    notes: List[str] = []
    groups = None
    per_position = dict(
        depends_on_other_positions=False, depends_on_other_samples="no", causal="yes", kv_cache_safe="yes"
    )

    if norm in ("layer", "rms"):
        if channels_last:
            reduced, num = (c_dim,), n * positions
        else:
            reduced, num = tuple(range(1, len(shape))), n
            per_position = dict(
                depends_on_other_positions=positions > 1,
                depends_on_other_samples="no",
                causal="no: the statistics span every position" if positions > 1 else "yes",
                kv_cache_safe="no" if positions > 1 else "yes",
            )
        statistic = "(mean, std) pair" if norm == "layer" else "root mean square (no mean)"
        params = [(nm, tuple(shape[d] for d in reduced)) for nm, _ in (affine if norm == "layer" else affine[:1])]
        result = dict(statistic=statistic, reduced=reduced, num=num, params=params, buffers=[], **per_position)
        result["train_eval"] = "identical (no running statistics, no batch dependence)"
    elif norm in ("batch", "masked_batch", "power"):
        reduced = (0, *positional)
        statistic = "quadratic mean (no mean subtraction)" if norm == "power" else "(mean, std) pair"
        buffers = [("running_phi", (c,))] if norm == "power" else running
        if norm == "power":
            cross = "during warmup only; afterwards the forward divides by running statistics of earlier batches"
            causal = "yes after warmup (running statistics); no during warmup (batch statistics span all tokens)"
            train_eval = (
                "training updates the running quadratic mean (and an approximate backward keeps a running "
                "gradient statistic); eval uses the running statistic"
            )
            notes.append("GroupScaling first divides each token by its RMS over channel groups (per token, causal)")
        else:
            cross = "yes in training (batch statistics); no in eval (running statistics)"
            causal = "no in training: every token's statistics include later tokens; yes in eval"
            train_eval = "training normalizes with batch statistics and updates running_mean/var; eval uses them"
        if norm == "masked_batch":
            notes.append("pad tokens are excluded from the statistics, get output 0 and gradient 0")
        elif norm == "batch" and len(shape) == 3:
            notes.append("pad tokens of a right-padded batch count as data and shift the statistics")
        result = dict(
            statistic=statistic,
            reduced=reduced,
            num=c,
            params=affine[:1] if norm == "power" else affine,
            buffers=buffers,
            depends_on_other_positions=True,
            depends_on_other_samples=cross,
            causal=causal,
            kv_cache_safe="in eval only (running statistics); a training-mode forward is not",
            train_eval=train_eval,
        )
    elif norm == "instance":
        result = dict(
            statistic="(mean, std) pair",
            reduced=positional,
            num=n * c,
            params=affine,
            buffers=[],
            depends_on_other_positions=positions > 1,
            depends_on_other_samples="no",
            causal="no: each channel's statistics span all positions" if positions > 1 else "yes",
            kv_cache_safe="no" if positions > 1 else "yes",
            train_eval="identical unless track_running_stats=True (then eval uses running statistics)",
        )
        notes.append("torch's InstanceNorm has affine=False by default: no parameters unless affine=True")
    else:
        groups = num_groups if num_groups is not None else math.gcd(32, c)
        if c % groups:
            raise ValueError(f"num_groups ({groups}) must divide the number of channels ({c})")
        result = dict(
            statistic="(mean, std) pair",
            reduced=(c_dim, *positional),
            num=n * groups,
            params=affine,
            buffers=[],
            depends_on_other_positions=positions > 1 or c // groups > 1,
            depends_on_other_samples="no",
            causal="no: each group's statistics span all positions" if positions > 1 else "yes",
            kv_cache_safe="no" if positions > 1 else "yes",
            train_eval="identical (no running statistics)",
        )
        notes.append(f"{groups} groups of {c // groups} channels; the reduction covers a channel group, not all C")

    return Explanation(
        norm=norm,
        shape=shape,
        channel_dim=c_dim,
        reduced_dims=tuple(sorted(result["reduced"])),
        statistic=result["statistic"],
        num_statistics=result["num"],
        statistics_per_sample=result["num"] if 0 in result["reduced"] else result["num"] // n,
        parameter_shapes=result["params"],
        buffer_shapes=result["buffers"],
        depends_on_other_positions=result["depends_on_other_positions"],
        depends_on_other_samples=result["depends_on_other_samples"],
        causal=result["causal"],
        kv_cache_safe=result["kv_cache_safe"],
        train_eval=result["train_eval"],
        notes=notes,
        num_layers=num_layers,
        norms_per_layer=norms_per_layer,
        num_groups=groups if norm == "group" else None,
    )


def _statistic_region(e: Explanation, n: int, c: int, s: int):
    """Boolean (n, c, s) voxel mask of the cells that one statistic reduces over."""
    import numpy as np

    region = np.zeros((n, c, s), dtype=bool)
    reduced = set(e.reduced_dims)
    batch_reduced = 0 in reduced
    channel_reduced = e.channel_dim in reduced
    position_reduced = any(d not in (0, e.channel_dim) for d in reduced)
    ns = slice(None) if batch_reduced else slice(0, 1)
    ps = slice(None) if position_reduced else slice(0, 1)
    if e.norm == "group":
        cs = slice(0, max(1, round(c / e.num_groups)))
    else:
        cs = slice(None) if channel_reduced else slice(0, 1)
    region[ns, cs, ps] = True
    return region


def plot_cube(e: Explanation, path: str) -> str:
    """Draw the N x C x (positions) cube, shading the cells one statistic is computed over."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(e.shape[0], 6)
    c = min(e.shape[e.channel_dim], 8)
    positions = [e.shape[d] for d in range(1, len(e.shape)) if d != e.channel_dim]
    s = min(math.prod(positions), 8) if positions else 1
    region = _statistic_region(e, n, c, s)
    colors = [[["#3b75af" if region[i, j, k] else "#dddddd" for k in range(s)] for j in range(c)] for i in range(n)]
    fig = plt.figure(figsize=(5.5, 5))
    ax = fig.add_subplot(projection="3d")
    ax.voxels(
        np.ones((n, c, s), dtype=bool), facecolors=np.array(colors, dtype=object), edgecolor="#777777", alpha=0.85
    )
    pos_label = "T" if len(e.shape) == 3 else "H·W"
    ax.set(
        xlabel=f"N ({e.shape[0]})",
        ylabel=f"C ({e.shape[e.channel_dim]})",
        zlabel=f"{pos_label} ({math.prod(positions) if positions else 1})",
    )
    ax.set_title(
        f"{e.norm} norm: one statistic is computed over the shaded cells\n{e.num_statistics:,} statistics in total"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
