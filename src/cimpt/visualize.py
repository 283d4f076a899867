"""``cimpt visualize CHECKPOINT``: the CIM figure for a batch of images, from any checkpoint.

The model is rebuilt from the checkpoint's saved config (docs/DESIGN.md lesson 11); ``key=value``
overrides can point at other images (``data.path=...``) or another output (``run.dir``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from cimpt.config import from_dict
from cimpt.engine.checkpoint import load_modules, open_checkpoint
from cimpt.errors import CimptError


def visualize_command(checkpoint: str, overrides: list[str], out: str = "", n: int = 8) -> Path:
    from cimpt.data import build_loader
    from cimpt.pretrain import build_cim_task
    from cimpt.viz import save_cim_figure

    if n < 1:
        raise CimptError(f"--n: the number of images must be at least 1, got {n}")
    ckpt = open_checkpoint(checkpoint, ("cim",), "visualize", "a CIM pre-training checkpoint")
    cfg = from_dict(ckpt.config, ["data.num_workers=0", *overrides])
    torch.manual_seed(cfg.seed)
    task = build_cim_task(cfg)
    load_modules(task.saved_modules(), ckpt)
    loader = build_loader(task.dataset, n, 0, task.collate, None, cfg.seed, drop_last=False)
    batch = next(iter(loader))
    task.model.eval()
    with torch.no_grad():
        panels = task.model.visualize(batch)  # type: ignore[operator]
    target = Path(out) if out else Path(cfg.run.dir) / "figures" / f"visualize_{ckpt.path.name}.png"
    return save_cim_figure(panels, target)
