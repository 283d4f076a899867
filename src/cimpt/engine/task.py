"""What the training loop needs to know about a job, and nothing about CIM itself.

A ``Task`` bundles a model whose ``forward(batch)`` returns a dict of scalar tensors with a
``"loss"`` key (DESIGN.md lesson 2), the dataset and collate function that feed it, the
modules whose weights go into checkpoints, and optional per-step hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset


class Task:
    """Base class; subclasses set the attributes and override the hooks they need."""

    #: A short name stored in checkpoint metadata ("cim", "tokenizer", ...).
    kind: str = "task"
    #: Config keys (dotted prefixes) that define the model; resuming with other values fails.
    arch_keys: Sequence[str] = ()

    def __init__(
        self,
        model: nn.Module,
        dataset: Dataset[Any],
        collate: Callable[[list[Any]], dict[str, Any]],
    ) -> None:
        self.model = model
        self.dataset = dataset
        self.collate = collate

    def saved_modules(self) -> dict[str, nn.Module]:
        """Modules whose weights are checkpointed, by key prefix."""
        return {"model": self.model}

    def on_step(self, step: int, total_steps: int) -> dict[str, float]:
        """Called before optimizer update ``step``; returns schedule values to log."""
        return {}

    def visualize(self, step: int, batch: dict[str, Any], run_dir: Path) -> None:
        """Write figures for ``batch`` (rank 0 only, every ``run.vis_every`` steps)."""

    def finish(self, run_dir: Path) -> None:
        """Called on rank 0 after the last step (e.g. to export final weights)."""

    def batch_size_of(self, batch: dict[str, Any]) -> int:
        x = batch.get("x")
        return int(x.shape[0]) if isinstance(x, torch.Tensor) else 0
