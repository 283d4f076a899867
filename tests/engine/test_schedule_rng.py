"""Per-step lr schedule, lr scaling, decay groups and RNG snapshots."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
import torch
from timm.optim import param_groups_weight_decay
from timm.scheduler import CosineLRScheduler
from torch import nn

from cimpt.baselines.simmim import SimMIM
from cimpt.engine.checkpoint import config_differences
from cimpt.engine.optim import param_groups
from cimpt.engine.rng import rng_state, set_rng_state
from cimpt.engine.schedule import scaled_lr, warmup_cosine
from cimpt.models.enhancer import Enhancer
from cimpt.models.generator import BEiTGenerator


def test_warmup_then_cosine() -> None:
    vals = [warmup_cosine(s, 100, 10, 1.0, 0.0) for s in range(100)]
    assert vals[0] == pytest.approx(0.1) and vals[9] == pytest.approx(1.0)
    assert vals[10] == pytest.approx(1.0)
    # Halfway through the cosine part the value is the midpoint.
    assert vals[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert all(a >= b for a, b in itertools.pairwise(vals[10:]))


def test_cosine_part_is_timms_and_only_the_warmup_differs() -> None:
    # timm's per-update scheduler as an independent computation of the cosine part; its
    # warm-up starts at warmup_lr_init (0) where ours starts at base / warmup (why ours is kept).
    total, warmup, base, final = 40, 8, 2.0, 0.1
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base)
    sched = CosineLRScheduler(
        opt,
        t_initial=total - warmup,
        lr_min=final,
        warmup_t=warmup,
        warmup_prefix=True,
        t_in_epochs=False,
    )
    for step in range(total + 3):
        sched.step_update(step)
        ours, timm_lr = warmup_cosine(step, total, warmup, base, final), opt.param_groups[0]["lr"]
        if step < warmup:
            assert ours == pytest.approx(base * (step + 1) / warmup)
            assert timm_lr == pytest.approx(base * step / warmup)
        else:
            assert ours == pytest.approx(timm_lr)


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


def _reference_split(model: nn.Module) -> tuple[set[str], set[str]]:
    """The split written out: no decay for < 2 dims and for the model's no_weight_decay()
    names, matched whole or as a dotted suffix; (decayed, not decayed) names."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = set(), set()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        named = name in skip or any(name.endswith("." + s) for s in skip)
        (no_decay if p.ndim <= 1 or named else decay).add(name)
    return decay, no_decay


class _Wrapper(nn.Module):
    """Returns its inner model's names unprefixed, as the segmentation model does."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(_Toy(), nn.Linear(4, 2))
        self.net[1].weight.requires_grad_(False)  # frozen: in no group

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}


def _models() -> list[nn.Module]:
    tiny = {"embed_dim": 32, "depth": 1, "num_heads": 2}
    return [
        _Toy(),
        _Wrapper(),
        Enhancer("vit_tiny_patch16_224", 16, 4, 0.0, tiny),
        Enhancer("resnet18", 32, 8, 0.0, {}, neck_dim=8),
        SimMIM(Enhancer("vit_tiny_patch16_224", 16, 4, 0.0, tiny), mean=[0.5] * 3, std=[0.5] * 3),
        BEiTGenerator(16, 4, 10, 32, 1, 2, 4.0),
    ]


@pytest.mark.parametrize("index", range(6))
@pytest.mark.parametrize("wd", [0.05, 0.0])
def test_decay_groups_match_the_written_out_split(index: int, wd: float) -> None:
    # The groups are the ones the rule above gives, in a fixed layout (decayed first, both
    # groups even at weight decay 0: a checkpoint's optimizer state is matched by position).
    model = _models()[index]
    decay, no_decay = param_groups(model, wd)
    names = {id(p): n for n, p in model.named_parameters()}
    got = (
        {names[id(p)] for p in decay["params"]},  # type: ignore[union-attr]
        {names[id(p)] for p in no_decay["params"]},  # type: ignore[union-attr]
    )
    assert got == _reference_split(model)
    assert decay["weight_decay"] == wd and no_decay["weight_decay"] == 0.0
    # timm's split agrees except where a name only matches as a suffix (why ours is kept).
    timm_groups = param_groups_weight_decay(
        model, 1.0, no_weight_decay_list=getattr(model, "no_weight_decay", set)()
    )
    timm_no_decay = {
        names[id(p)] for g in timm_groups if not g["weight_decay"] for p in g["params"]
    }
    assert (timm_no_decay == got[1]) == (index != 1)  # _Wrapper: timm decays net.0.pos_embed
    order = [n for n, p in model.named_parameters() if p.requires_grad]
    for group, members in zip((decay, no_decay), got, strict=True):
        listed = [names[id(p)] for p in group["params"]]  # type: ignore[union-attr]
        assert listed == [n for n in order if n in members]  # module order, as before


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
