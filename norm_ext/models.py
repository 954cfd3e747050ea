"""A small transformer for comparing normalization choices: :class:`TransformerBlock` and
:class:`DecoderLM`, with ``norm_position`` in {"pre", "post"} and ``norm`` in
{"layer", "rms", "batch", "masked_batch", "power"}.

Inputs are ``(B, T)`` token ids, right-padded, with a ``(B, T)`` bool ``padding_mask`` (True = pad).
Attention is causal, so with right padding no real token attends to a pad.

The pre-norm block uses the fused residual step: ``norm2`` receives the attention output and the
residual stream and returns ``(norm2(h), h)`` with ``h = residual + attention``, from one kernel when
the norm is layer or rms (:class:`norm_ext.nn.AddLayerNorm` / :class:`norm_ext.nn.AddRMSNorm`).
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import nn as norm_ext_nn

__all__ = ["NORMS", "NORM_POSITIONS", "SequenceNorm", "TransformerBlock", "DecoderLM", "missing_norm_module"]

NORMS = ("layer", "rms", "batch", "masked_batch", "power")
NORM_POSITIONS = ("pre", "post")

# norm -> (norm_ext.nn class it needs, the issue that provides it)
_REQUIRED_MODULE = {
    "layer": ("AddLayerNorm", "the row-norm foundation"),
    "rms": ("AddRMSNorm", "the row-norm foundation"),
    "batch": ("BatchNorm1d", "the BatchNorm issue"),
    "masked_batch": ("MaskedBatchNorm1d", "the BatchNorm issue (padding-aware BatchNorm)"),
    "power": ("PowerNorm", "the PowerNorm issue"),
}


def missing_norm_module(norm: str) -> str | None:
    """The ``norm_ext.nn`` class that ``norm`` needs and this build lacks, or None when present."""
    if norm not in _REQUIRED_MODULE:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    name = _REQUIRED_MODULE[norm][0]
    return None if hasattr(norm_ext_nn, name) else name


class SequenceNorm(nn.Module):
    """One normalization of a ``(B, T, C)`` activation, whatever its kind, with a padding mask.

    * layer / rms: per token; the mask is not needed.
    * batch: BatchNorm1d over all ``B * T`` positions, pads included, as a BatchNorm dropped into a
      transformer computes it.
    * masked_batch: MaskedBatchNorm1d, statistics over valid tokens only.
    * power: PowerNorm (quadratic mean over valid tokens, running statistics after warmup).
    """

    def __init__(self, norm: str, d_model: int) -> None:
        super().__init__()
        missing = missing_norm_module(norm)
        if missing is not None:
            raise NotImplementedError(
                f"norm={norm!r} needs norm_ext.nn.{missing}, which this build of norm_ext does not have yet "
                f"(it comes with {_REQUIRED_MODULE[norm][1]})"
            )
        self.kind = norm
        self.norm = getattr(norm_ext_nn, _REQUIRED_MODULE[norm][0])(d_model)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        if self.kind in ("layer", "rms"):
            return self.norm(x)[0]
        if self.kind == "batch":
            return self.norm(x.reshape(-1, x.shape[-1])).view_as(x)
        if padding_mask is None:
            padding_mask = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
        return self.norm(x, padding_mask)

    def add_forward(self, delta: Tensor, residual: Tensor, padding_mask: Tensor | None = None) -> Tuple[Tensor, Tensor]:
        """``h = residual + delta``; returns ``(norm(h), h)``, fused for layer / rms."""
        if self.kind in ("layer", "rms"):
            return self.norm(delta, residual)
        h = residual + delta
        return self.forward(h, padding_mask), h


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, c // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, t, c))


class TransformerBlock(nn.Module):
    """Attention + MLP block with the norm before each sublayer ("pre", the GPT-2 / Llama layout) or
    after each residual add ("post", the original Transformer's)."""

    def __init__(
        self, d_model: int, n_heads: int, d_ff: int | None = None, norm: str = "layer", norm_position: str = "pre"
    ) -> None:
        super().__init__()
        if norm_position not in NORM_POSITIONS:
            raise ValueError(f"norm_position must be one of {NORM_POSITIONS}, got {norm_position!r}")
        self.norm_position = norm_position
        self.attn = CausalSelfAttention(d_model, n_heads)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, d_ff or 4 * d_model), nn.GELU(), nn.Linear(d_ff or 4 * d_model, d_model)
        )
        self.norm1 = SequenceNorm(norm, d_model)
        self.norm2 = SequenceNorm(norm, d_model)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        if self.norm_position == "pre":
            normed, h = self.norm2.add_forward(self.attn(self.norm1(x, padding_mask)), x, padding_mask)
            return h + self.mlp(normed)
        x, _ = self.norm1.add_forward(self.attn(x), x, padding_mask)
        x, _ = self.norm2.add_forward(self.mlp(x), x, padding_mask)
        return x


class DecoderLM(nn.Module):
    """A tiny GPT-style decoder. Pre-norm stacks end with a final norm before the head; post-norm
    stacks do not need one (their last op already is a norm)."""

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 64,
        n_layers: int = 4,
        n_heads: int = 4,
        max_len: int = 128,
        norm: str = "layer",
        norm_position: str = "pre",
    ) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(max_len, d_model)
        self.blocks = nn.ModuleList(
            TransformerBlock(d_model, n_heads, None, norm, norm_position) for _ in range(n_layers)
        )
        self.final_norm = SequenceNorm(norm, d_model) if norm_position == "pre" else None
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, tokens: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        t = tokens.shape[1]
        x = self.tok_emb(tokens) + self.pos_emb(torch.arange(t, device=tokens.device))
        for block in self.blocks:
            x = block(x, padding_mask)
        if self.final_norm is not None:
            x = self.final_norm(x, padding_mask)
        return self.head(x)

    def loss(self, tokens: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Next-token cross-entropy over real (non-pad) targets."""
        logits = self(tokens[:, :-1], None if padding_mask is None else padding_mask[:, :-1])
        targets = tokens[:, 1:]
        if padding_mask is not None:
            targets = targets.masked_fill(padding_mask[:, 1:], -100)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
