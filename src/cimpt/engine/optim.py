"""AdamW with BEiT's weight-decay exclusions (docs/METHOD.md, pre-training recipe).

No decay for norms, biases (every parameter with fewer than 2 dims), position embeddings,
class and [MASK] tokens (the names a model returns from ``no_weight_decay()``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


def no_decay_names(model: nn.Module) -> set[str]:
    fn = getattr(model, "no_weight_decay", None)
    names = set(fn()) if callable(fn) else set()
    return names


def param_groups(
    model: nn.Module, weight_decay: float, skip: Iterable[str] = ()
) -> list[dict[str, object]]:
    """Split trainable parameters into a decayed and a non-decayed group (in that order).

    Not timm's ``param_groups_weight_decay``, which gives the same split for exact names
    (tests/engine/test_schedule_rng.py) but: matches no dotted suffix (the segmentation
    model returns its backbone's names, e.g. ``pos_embed``); puts the non-decayed group
    first and returns one group at weight decay 0, where a checkpoint's optimizer state is
    matched to the groups by position; and importing it loads timm (as slow as torch) into
    the engine, which tokenizer training and the CLI otherwise start without.
    """
    skip = set(skip) | no_decay_names(model)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name in skip or any(name.endswith("." + s) for s in skip):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_adamw(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    groups: list[dict[str, Any]] | None = None,
) -> torch.optim.AdamW:
    """AdamW; the fused kernel on CPU and CUDA (one kernel per tensor instead of ~10 small
    ops per parameter, whose cost swings with the machine's load; docs/BENCHMARKS.md).

    ``groups`` replaces the default decay/no-decay split (e.g. layer-wise lr decay groups).
    """
    devices = {p.device.type for p in model.parameters()}
    fused = devices <= {"cpu", "cuda"}
    if groups is None:
        groups = param_groups(model, weight_decay)
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)
