"""``seed`` alone fixes a model's initial weights, for every command that builds one.

Each builder is called three times, with random draws in between: the same seed must give
the same weights, another seed other weights (for fine-tuning from scratch, linear probing's
head, CIM pre-training and the tokenizer).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from cimpt.config import CONFIG_DIR, load_config

FINETUNE_CONFIG = CONFIG_DIR / "cifar10_finetune.yaml"


def _initial_weights(build: Callable[[Any], Any], cfg: Any) -> dict[str, torch.Tensor]:
    torch.rand(7)  # whatever ran before in the process must not matter
    return {k: v.clone() for k, v in build(cfg).model.state_dict().items()}


@pytest.mark.parametrize("command", ["finetune", "linprobe", "pretrain", "tokenizer"])
def test_seed_fixes_the_initial_weights(
    command: str,
    tmp_path: Path,
    e2e: SimpleNamespace,
    ft_overrides: Callable[..., list[str]],
    cim_overrides: Callable[..., list[str]],
    pretrained_runs: Callable[[str], Path],
    image_folder: Path,
) -> None:
    from cimpt.eval.finetune import build_finetune_task
    from cimpt.eval.linprobe import build_linprobe_task
    from cimpt.pretrain import build_cim_task
    from cimpt.tokenizers.train import build_tokenizer_task

    run = tmp_path / "run"
    cases = {
        "finetune": (
            build_finetune_task,
            FINETUNE_CONFIG,
            ft_overrides(run, extra=("init.checkpoint=",)),
        ),
        "linprobe": (
            build_linprobe_task,
            FINETUNE_CONFIG.with_name("cifar10_linprobe.yaml"),
            ft_overrides(run, extra=(f"init.checkpoint={pretrained_runs('revdet')}",)),
        ),
        "pretrain": (build_cim_task, e2e.CIM_CONFIG, cim_overrides(run)),
        "tokenizer": (
            build_tokenizer_task,
            e2e.TOKENIZER_CONFIG,
            e2e.tiny_tokenizer_overrides(run, image_folder),
        ),
    }
    build, config, overrides = cases[command]
    a = _initial_weights(build, load_config(config, [*overrides, "seed=3"]))
    b = _initial_weights(build, load_config(config, [*overrides, "seed=3"]))
    other = _initial_weights(build, load_config(config, [*overrides, "seed=4"]))
    assert a.keys() == b.keys() == other.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Some weights are deterministic (zeros, ones); the randomly drawn ones must change.
    assert any(not torch.equal(a[k], other[k]) for k in a)
    if command == "linprobe":  # the backbone is loaded from the checkpoint: only the head
        changed = [k for k in a if not torch.equal(a[k], other[k])]
        assert changed and all(".head." in k for k in changed), changed
