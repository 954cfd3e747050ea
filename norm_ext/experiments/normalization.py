"""Train small decoder LMs with each norm placement and kind, and measure BN statistics under padding.

For every configuration (norm in layer/rms/batch/masked_batch/power, placement pre/post) that this
build supports, a tiny character-level :class:`norm_ext.models.DecoderLM` is trained on a corpus
generated here from a small grammar (offline, deterministic). The run records:

* the training loss per step;
* the gradient norm of each block's parameters at initialisation and at checkpoints during training
  (Xiong et al. 2020 predict large gradients near the output for post-norm at init);
* how BatchNorm statistics drift when batches of variable-length sequences are right-padded: the
  per-batch shift of the channel means and variances caused by pad positions, and where the running
  statistics end up, compared with statistics of the valid tokens only.

It writes ``results.json`` (every number), ``summary.txt`` (statements computed from those numbers)
and ``normalization.png`` (when matplotlib is installed) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch

from .. import nn as norm_ext_nn
from ..models import NORM_POSITIONS, NORMS, DecoderLM, missing_norm_module

PAD, BOS, EOS = 0, 1, 2

_SUBJECTS = ["the cat", "a dog", "my friend", "the old man", "some birds", "the teacher", "a small child", "we", "they"]
_VERBS = ["sees", "likes", "finds", "carries", "paints", "follows", "hears", "reads", "builds"]
_OBJECTS = ["the ball", "a red house", "the river", "two apples", "a long letter", "the moon", "her book", "the garden"]
_ADVERBS = ["", "", "slowly", "today", "again", "at night", "in the rain", "with care"]
_TAILS = ["", "", "", " and then it rains", " because it is late", " while the sun sets over the hills far away"]


def generate_corpus(num_sentences: int, seed: int) -> List[str]:
    """Sentences from a small grammar; lengths vary from about 10 to about 90 characters."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(num_sentences):
        words = [rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS), rng.choice(_ADVERBS)]
        sentence = " ".join(w for w in words if w) + rng.choice(_TAILS)
        sentences.append(sentence[: rng.randint(10, len(sentence))] if rng.random() < 0.3 else sentence)
    return sentences


class CharTokenizer:
    def __init__(self, corpus: List[str]) -> None:
        self.chars = sorted(set("".join(corpus)))
        self.index = {c: i + 3 for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 3

    def encode(self, s: str) -> List[int]:
        return [BOS] + [self.index[c] for c in s] + [EOS]


def make_batch(encoded: List[List[int]], max_len: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, T) token ids and the (B, T) padding mask (True = pad)."""
    seqs = [s[:max_len] for s in encoded]
    t = max(len(s) for s in seqs)
    tokens = torch.full((len(seqs), t), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)] = torch.tensor(s)
    return tokens, tokens == PAD


@dataclass
class Settings:
    steps: int
    d_model: int
    n_layers: int
    n_heads: int
    batch_size: int
    num_sentences: int
    grad_checkpoints: int
    drift_batches: int
    lr: float
    seed: int


SETTINGS = {
    "default": Settings(300, 64, 4, 4, 16, 2000, 6, 60, 1e-3, 0),
    "tiny": Settings(30, 32, 2, 2, 8, 200, 3, 12, 1e-3, 0),
}


def block_grad_norms(model: DecoderLM) -> List[float]:
    norms = []
    for block in model.blocks:
        sq = sum(float(p.grad.double().square().sum()) for p in block.parameters() if p.grad is not None)
        norms.append(math.sqrt(sq))
    return norms


def heldout_losses(model: DecoderLM, heldout: List[List[int]], max_len: int, batch_size: int) -> Dict[str, float]:
    """Loss on held-out padded batches with the model in eval mode (running statistics) and in train
    mode (batch statistics). Norms without batch statistics give the same number twice."""
    batches = [make_batch(heldout[i : i + batch_size], max_len) for i in range(0, len(heldout), batch_size)]
    result = {}
    with torch.no_grad():
        for mode in ("eval", "train"):
            model.train(mode == "train")
            result[mode] = sum(model.loss(t, m).item() for t, m in batches) / len(batches)
    model.eval()
    return result


def train_config(
    norm: str, position: str, data: List[List[int]], heldout: List[List[int]], vocab_size: int, s: Settings
) -> Dict:
    torch.manual_seed(s.seed)
    rng = random.Random(s.seed)
    max_len = max(len(x) for x in data + heldout)
    model = DecoderLM(vocab_size, s.d_model, s.n_layers, s.n_heads, max_len, norm=norm, norm_position=position)
    optimizer = torch.optim.Adam(model.parameters(), lr=s.lr)
    checkpoints = sorted(
        {0} | {round(i * (s.steps - 1) / max(1, s.grad_checkpoints - 1)) for i in range(s.grad_checkpoints)}
    )
    losses, grad_norms = [], {}
    start = time.perf_counter()
    for step in range(s.steps):
        tokens, mask = make_batch(rng.sample(data, s.batch_size), max_len)
        loss = model.loss(tokens, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if step in checkpoints:
            grad_norms[step] = block_grad_norms(model)
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            break
        optimizer.step()
    seconds = time.perf_counter() - start
    return {
        "norm": norm,
        "norm_position": position,
        "losses": losses,
        "grad_norms": {str(k): v for k, v in grad_norms.items()},
        "heldout_loss": heldout_losses(model, heldout, max_len, s.batch_size),
        "seconds": seconds,
        "model": model,
    }


def _batch_norm_module(num_features: int) -> Tuple[torch.nn.Module, str]:
    cls = getattr(norm_ext_nn, "BatchNorm1d", None)
    if cls is not None:
        return cls(num_features), "norm_ext.nn.BatchNorm1d"
    return torch.nn.BatchNorm1d(num_features), "torch.nn.BatchNorm1d (norm_ext.nn.BatchNorm1d not in this build)"


def measure_padding_drift(
    model: DecoderLM, data: List[List[int]], s: Settings, rng: random.Random
) -> Dict[str, object]:
    """BN statistics of the first block's input (token + position embeddings) with and without pads.

    Batches are drawn so that their pad fraction varies: each holds one long sequence and otherwise
    sequences of a random length class. For each batch the channel means / variances over all
    B * T positions (what BatchNorm sees) are compared with those over valid tokens only; then a
    BatchNorm's running statistics after all batches are compared with the valid-token statistics.
    """
    max_len = max(len(x) for x in data)
    by_length = sorted(data, key=len)
    longest = by_length[-len(by_length) // 10 :]
    d = model.tok_emb.embedding_dim
    padded_bn, padded_bn_name = _batch_norm_module(d)
    packed_bn = torch.nn.BatchNorm1d(d)
    masked_cls = getattr(norm_ext_nn, "MaskedBatchNorm1d", None)
    masked_bn = masked_cls(d) if masked_cls is not None else None
    per_batch, valid_all = [], []
    with torch.no_grad():
        for _ in range(s.drift_batches):
            lo = rng.randrange(len(by_length))
            short = by_length[max(0, lo - s.batch_size) : lo + 1] or by_length[:1]
            batch = [rng.choice(longest)] + [rng.choice(short) for _ in range(s.batch_size - 1)]
            tokens, mask = make_batch(batch, max_len)
            feats = model.tok_emb(tokens) + model.pos_emb(torch.arange(tokens.shape[1]))
            valid = feats[~mask]
            valid_all.append(valid)
            flat = feats.reshape(-1, d)
            mean_v, var_v = valid.mean(0), valid.var(0, unbiased=False)
            mean_p, var_p = flat.mean(0), flat.var(0, unbiased=False)
            std_v = (var_v + 1e-5).sqrt()
            per_batch.append(
                {
                    "pad_fraction": float(mask.float().mean()),
                    "mean_shift_in_std": float(((mean_p - mean_v).abs() / std_v).mean()),
                    "var_ratio": float((var_p / var_v.clamp_min(1e-12)).mean()),
                }
            )
            padded_bn.train()(flat)
            packed_bn.train()(valid)
            if masked_bn is not None:
                masked_bn.train()(feats, mask)
        everything = torch.cat(valid_all)
        true_mean, true_std = everything.mean(0), everything.std(0, unbiased=False) + 1e-6

    def distance(module) -> float | None:
        if module is None:
            return None
        return float(((module.running_mean - true_mean).abs() / true_std).mean())

    fractions = torch.tensor([b["pad_fraction"] for b in per_batch])
    shifts = torch.tensor([b["mean_shift_in_std"] for b in per_batch])
    corr = float(torch.corrcoef(torch.stack([fractions, shifts]))[0, 1]) if len(per_batch) > 2 else float("nan")
    return {
        "features": "token + position embeddings (input of block 0) of the trained model",
        "per_batch": per_batch,
        "pad_fraction_vs_mean_shift_correlation": corr,
        "running_mean_distance_in_std": {
            f"padded BatchNorm ({padded_bn_name})": distance(padded_bn),
            "BatchNorm on the packed valid tokens": distance(packed_bn),
            "norm_ext.nn.MaskedBatchNorm1d": distance(masked_bn),
        },
    }


def summarize(runs: List[Dict], skipped: List[Tuple[str, str, str]], drift: Dict, s: Settings) -> str:
    lines = [f"norm_ext normalization experiment: {s.steps} steps, d_model={s.d_model}, {s.n_layers} layers"]
    tail = max(1, s.steps // 10)
    finals = []
    for r in runs:
        name = f"{r['norm_position']}-{r['norm']}"
        losses = r["losses"]
        finite = all(math.isfinite(v) for v in losses)
        final = sum(losses[-tail:]) / len(losses[-tail:]) if finite else float("nan")
        finals.append((final, name))
        init = r["grad_norms"]["0"]
        ratio = init[-1] / init[0] if init[0] > 0 else float("inf")
        lines.append(
            f"- {name}: loss {losses[0]:.3f} -> {final:.3f} (mean of last {tail} steps)"
            f"{'' if finite else ' DIVERGED (non-finite loss)'}; grad norm at init, last block / first block = "
            f"{ratio:.2f} ({', '.join(f'{g:.3g}' for g in init)}); held-out loss {r['heldout_loss']['eval']:.3f} in "
            f"eval mode, {r['heldout_loss']['train']:.3f} with batch statistics; {r['seconds']:.1f} s"
        )
    for norm, position, reason in skipped:
        lines.append(f"- {position}-{norm}: not run: {reason}")
    ranked = sorted((f, n) for f, n in finals if math.isfinite(f))
    if ranked:
        lines.append(
            f"Lowest final loss: {ranked[0][1]} ({ranked[0][0]:.3f}); highest: {ranked[-1][1]} ({ranked[-1][0]:.3f})."
        )
    for norm in NORMS:
        by_pos = {r["norm_position"]: r["grad_norms"]["0"] for r in runs if r["norm"] == norm}
        if set(by_pos) == set(NORM_POSITIONS):
            post, pre = by_pos["post"], by_pos["pre"]
            lines.append(
                f"{norm}: at init the last block's gradient norm is {post[-1] / pre[-1]:.2f}x pre-norm's under "
                f"post-norm; the last/first block ratio is {post[-1] / post[0]:.2f} (post) "
                f"vs {pre[-1] / pre[0]:.2f} (pre)."
            )
    per_batch = drift["per_batch"]
    shifts = [b["mean_shift_in_std"] for b in per_batch]
    fractions = [b["pad_fraction"] for b in per_batch]
    lines.append(
        f"Padding drift ({len(per_batch)} batches, pad fraction {min(fractions):.2f}-{max(fractions):.2f}): pads move "
        f"BatchNorm's channel means by {min(shifts):.3f}-{max(shifts):.3f} valid-token std (mean "
        f"{sum(shifts) / len(shifts):.3f}); correlation with pad fraction r = "
        f"{drift['pad_fraction_vs_mean_shift_correlation']:.2f}."
    )
    for name, dist in drift["running_mean_distance_in_std"].items():
        if dist is not None:
            lines.append(f"  running mean after training, distance to valid-token mean: {name}: {dist:.3f} std")
    return "\n".join(lines) + "\n"


def plot(runs: List[Dict], drift: Dict, path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for r in runs:
        label = f"{r['norm_position']}-{r['norm']}"
        axes[0].plot(r["losses"], label=label)
        line = axes[1].plot(range(1, len(r["grad_norms"]["0"]) + 1), r["grad_norms"]["0"], marker="o", label=label)
        last = r["grad_norms"][max(r["grad_norms"], key=int)]
        axes[1].plot(range(1, len(last) + 1), last, linestyle="--", color=line[0].get_color())
    axes[0].set(title="training loss", xlabel="step", ylabel="cross-entropy")
    axes[1].set(
        title="gradient norm per block: init (solid), last checkpoint (dashed)",
        xlabel="block (input -> output)",
        ylabel="||grad||",
        yscale="log",
    )
    axes[1].set_xticks(range(1, len(runs[0]["grad_norms"]["0"]) + 1))
    per_batch = drift["per_batch"]
    axes[2].scatter([b["pad_fraction"] for b in per_batch], [b["mean_shift_in_std"] for b in per_batch])
    axes[2].set(
        title="BN channel-mean shift caused by pads", xlabel="pad fraction of the batch", ylabel="|shift| / std"
    )
    for ax in axes[:2]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def run(settings: Settings, out_dir: str, log=print) -> Dict:
    os.makedirs(out_dir, exist_ok=True)
    corpus = generate_corpus(settings.num_sentences, settings.seed)
    tokenizer = CharTokenizer(corpus)
    encoded = [tokenizer.encode(x) for x in corpus]
    num_heldout = max(settings.batch_size, len(encoded) // 10)
    data, heldout = encoded[num_heldout:], encoded[:num_heldout]
    runs, skipped = [], []
    for norm in NORMS:
        for position in NORM_POSITIONS:
            missing = missing_norm_module(norm)
            if missing is not None:
                skipped.append((norm, position, f"norm_ext.nn.{missing} is not in this build"))
                continue
            log(f"training {position}-{norm} ...")
            runs.append(train_config(norm, position, data, heldout, tokenizer.vocab_size, settings))
    if not runs:
        raise RuntimeError("no configuration could run in this build")
    drift = measure_padding_drift(runs[0]["model"], data, settings, random.Random(settings.seed + 1))
    summary = summarize(runs, skipped, drift, settings)
    results = {
        "settings": settings.__dict__,
        "corpus": {"sentences": len(corpus), "vocab_size": tokenizer.vocab_size, "examples": corpus[:3]},
        "runs": [{k: v for k, v in r.items() if k != "model"} for r in runs],
        "skipped": [{"norm": n, "norm_position": p, "reason": why} for n, p, why in skipped],
        "padding_drift": drift,
    }
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(out_dir, "summary.txt"), "w") as f:
        f.write(summary)
    figure = os.path.join(out_dir, "normalization.png")
    if not plot(runs, drift, figure):
        log("matplotlib not installed: no figure written")
    log(summary)
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tiny", action="store_true", help="a seconds-long setting for CI")
    parser.add_argument("--steps", type=int, help="training steps per configuration")
    parser.add_argument("--seed", type=int, help="random seed")
    parser.add_argument("--out", default="normalization_out", help="output directory")


def main(args: argparse.Namespace) -> int:
    settings = SETTINGS["tiny" if args.tiny else "default"]
    overrides = {k: v for k, v in (("steps", args.steps), ("seed", args.seed)) if v is not None}
    settings = Settings(**{**settings.__dict__, **overrides})
    # The matrices are tiny: one thread is faster than several that spin-wait on a shared CPU.
    torch.set_num_threads(1)
    run(settings, args.out)
    return 0
