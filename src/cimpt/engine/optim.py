"""AdamW with BEiT's weight-decay exclusions (docs/METHOD.md, pre-training recipe).

No decay for norms, biases (every parameter with fewer than 2 dims), position embeddings,
class and [MASK] tokens (the names a model returns from ``no_weight_decay()``).
"""

from __future__ import annotations

import glob
from collections.abc import Iterable
from typing import Any

import torch
from timm.optim import param_groups_weight_decay
from torch import nn


def no_decay_names(model: nn.Module) -> set[str]:
    fn = getattr(model, "no_weight_decay", None)
    names = set(fn()) if callable(fn) else set()
    return names


def param_groups(
    model: nn.Module, weight_decay: float, skip: Iterable[str] = ()
) -> list[dict[str, object]]:
    """Split trainable parameters into a decayed and a non-decayed group (in that order).

    timm's ``param_groups_weight_decay`` does the split: no decay for parameters with fewer
    than 2 dims (norms, biases) and the named ones. Kept from before timm: a name from
    ``skip`` or ``no_weight_decay()`` also matches as a dotted suffix (the segmentation model
    returns its backbone's names, e.g. ``pos_embed``); and the layout, decayed group first,
    also at weight decay 0 (where timm gives a single group), because a checkpoint's
    optimizer state is matched to the groups by position.
    """
    names = set(skip) | no_decay_names(model)
    patterns = [glob.escape(n) for n in names] + [f"*.{glob.escape(n)}" for n in names]
    # A nonzero weight decay, so that timm always splits; the real values are set below.
    split = param_groups_weight_decay(model, 1.0, no_weight_decay_list=patterns)
    decay = [p for g in split if g["weight_decay"] for p in g["params"]]
    no_decay = [p for g in split if not g["weight_decay"] for p in g["params"]]
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
