"""Per-step lr schedule, lr scaling, decay groups and RNG snapshots."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from cimpt.engine.checkpoint import config_differences
from cimpt.engine.optim import param_groups
from cimpt.engine.rng import rng_state, set_rng_state
from cimpt.engine.schedule import scaled_lr, warmup_cosine


def test_warmup_then_cosine() -> None:
    vals = [warmup_cosine(s, 100, 10, 1.0, 0.0) for s in range(100)]
    assert vals[0] == pytest.approx(0.1) and vals[9] == pytest.approx(1.0)
    assert vals[10] == pytest.approx(1.0)
    # Halfway through the cosine part the value is the midpoint.
    assert vals[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert all(a >= b for a, b in itertools.pairwise(vals[10:]))


def test_lr_scaling_rule() -> None:
    assert scaled_lr(1.5e-3, 0.0, 512) == pytest.approx(3e-3)
    assert scaled_lr(1.5e-3, 0.01, 512) == 0.01


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.pos_embed = nn.Parameter(torch.zeros(1, 3, 4))

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}


def test_no_decay_for_norms_biases_and_named() -> None:
    model = _Toy()
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in decay["params"]} == {"lin.weight"}  # type: ignore[union-attr]
    assert {names[id(p)] for p in no_decay["params"]} == {  # type: ignore[union-attr]
        "lin.bias",
        "norm.weight",
        "norm.bias",
        "pos_embed",
    }
    assert no_decay["weight_decay"] == 0.0


def test_rng_snapshot_round_trip() -> None:
    snap = rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(snap)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_config_differences_names_keys() -> None:
    stored = {"enhancer": {"name": "vit", "patch_size": 4}, "train": {"lr": 1}}
    current = {"enhancer": {"name": "vit", "patch_size": 8}, "train": {"lr": 2}}
    diffs = config_differences(stored, current, ["enhancer"])
    assert diffs == ["enhancer.patch_size: checkpoint 4 vs config 8"]
