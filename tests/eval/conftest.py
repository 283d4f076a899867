"""Fixtures of the evaluation tests: a labelled held-out folder and tiny fine-tuning runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from cimpt.config import CONFIG_DIR

FINETUNE_CONFIG = CONFIG_DIR / "cifar10_finetune.yaml"
LINPROBE_CONFIG = FINETUNE_CONFIG.with_name("cifar10_linprobe.yaml")
# The tiny enhancer of tests/conftest.py's CIM runs; fine-tuning must build the same one.
TINY_ARCH = "enhancer.kwargs={embed_dim: 32, depth: 1, num_heads: 2}"


@pytest.fixture(scope="session")
def val_folder(tmp_path_factory: pytest.TempPathFactory, e2e: SimpleNamespace) -> Path:
    """6 images per class, same two classes as ``image_folder``, other seeds."""
    root = tmp_path_factory.mktemp("val")
    for c, name in enumerate(("cats", "dogs")):
        (root / name).mkdir()
        for i in range(6):
            e2e.structured_image(50_000 + 1000 * c + i).save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def ft_overrides(image_folder: Path, val_folder: Path) -> Callable[..., list[str]]:
    """``ft_overrides(run_dir, steps=4, extra=[...])``: a tiny fine-tuning run's overrides."""

    def make(run_dir: Path, steps: int = 4, extra: tuple[str, ...] = ()) -> list[str]:
        return [
            f"run.dir={run_dir}",
            f"data.path={image_folder}",
            f"data.val_path={val_folder}",
            TINY_ARCH,
            "train.batch_size=4",
            f"train.max_steps={steps}",
            "train.warmup_epochs=0.1",
            "data.num_workers=0",
            "run.log_every=1",
            f"run.ckpt_every={steps}",
            "run.progress=false",
            "run.tensorboard=false",
            "eval.batch_size=5",
            *extra,
        ]

    return make
