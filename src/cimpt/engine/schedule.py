"""Per-step schedules (docs/DESIGN.md lesson 5): values are functions of the global step."""

from __future__ import annotations

import math


def warmup_cosine(
    step: int, total_steps: int, warmup_steps: int, base: float, final: float
) -> float:
    """Linear warm-up from 0 to ``base`` over ``warmup_steps``, then cosine down to ``final``.

    ``step`` counts optimizer updates from 0; the value returned is the one used for update
    ``step``.

    Not timm's ``CosineLRScheduler(t_in_epochs=False, warmup_prefix=True)``: its cosine part
    is the same, but its warm-up gives update 0 ``warmup_lr_init`` (0 here, a wasted update)
    and reaches ``base`` one update later; no ``warmup_lr_init`` / ``warmup_t`` reproduces
    this ramp (tests/engine/test_schedule_rng.py), and a pure function of the step needs no
    scheduler state in the checkpoint for an exact resume.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return base * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return final + 0.5 * (base - final) * (1.0 + math.cos(math.pi * progress))


def scaled_lr(blr: float, lr: float, batch_size: int) -> float:
    """The absolute lr: ``lr`` when set, else ``blr * batch / 256`` (MAE/BEiT scaling rule)."""
    return lr if lr > 0 else blr * batch_size / 256.0
