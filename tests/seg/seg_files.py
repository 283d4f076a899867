"""Helpers of the segmentation tests: tiny generated CamVid-style folders and run overrides.

Images are 24x20 PNGs whose label is a function of position (a left/right split into classes
0 and 1, a square of class 2, a void border row), so the network can learn it and every test
can compute the expected values independently.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
SEG_CONFIG = REPO / "configs" / "camvid_segment.yaml"
W, H = 24, 20
NUM_CLASSES, IGNORE = 3, 255
TINY_VIT = "enhancer.kwargs={embed_dim: 32, depth: 1, num_heads: 2}"


def make_pair(
    seed: int, w: int = W, h: int = H, ignore: int = IGNORE
) -> tuple[Image.Image, Image.Image]:
    """An RGB image and its label (mode L): classes 0 | 1 left/right, a class-2 square,
    the top row void (``ignore``); the image's colour follows the class, plus noise."""
    rng = np.random.default_rng(seed)
    label = np.zeros((h, w), dtype=np.uint8)
    label[:, w // 2 :] = 1
    y0, x0 = rng.integers(2, h // 2), rng.integers(0, w // 2)
    label[y0 : y0 + 5, x0 : x0 + 5] = 2
    colours = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]], dtype=np.float64)
    img = colours[label] + rng.normal(0, 10, size=(h, w, 3))
    label[0] = ignore
    return (
        Image.fromarray(img.clip(0, 255).astype(np.uint8)),
        Image.fromarray(label, mode="L"),
    )


def write_split(root: Path, n: int, seed: int = 0, ignore: int = IGNORE) -> Path:
    """``root/images/NNN.png`` + ``root/labels/NNN.png``; returns ``root``."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img, lab = make_pair(seed + i, ignore=ignore)
        img.save(root / "images" / f"{i:03d}.png")
        lab.save(root / "labels" / f"{i:03d}.png")
    return root


def seg_overrides(
    run_dir: Path, data: Path, steps: int = 3, extra: tuple[str, ...] = ()
) -> list[str]:
    """A tiny ``cimpt segment`` run: 16 px crops of the tiny ViT, 3 classes, void 255."""
    return [
        f"run.dir={run_dir}",
        f"data.path={data / 'train'}",
        f"data.val_path={data / 'val'}",
        TINY_VIT,
        "data.img_size=16",
        "segment.num_classes=3",
        "segment.ignore_index=255",
        "segment.class_names=[a, b, c]",
        "segment.short_side=0",
        "segment.decoder_dim=8",
        "segment.figure_images=2",
        "train.batch_size=4",
        f"train.max_steps={steps}",
        "train.warmup_epochs=0.1",
        "data.num_workers=0",
        "run.log_every=1",
        f"run.ckpt_every={steps}",
        "run.progress=false",
        "run.tensorboard=false",
        "eval.batch_size=8",
        *extra,
    ]
