"""What the training loop needs to know about a job, and nothing about CIM itself.

A ``Task`` bundles a model whose ``forward(batch)`` returns a dict of scalar tensors with a
``"loss"`` key (docs/DESIGN.md lesson 2), the dataset and collate function that feed it, the
modules whose weights go into checkpoints, and optional hooks: per-step schedules, optimizer
parameter groups (e.g. layer-wise lr decay), an update after each optimizer step (e.g. an
EMA of the weights), periodic evaluation, and a little state of its own that is checkpointed
(e.g. the best accuracy so far).
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
    #: What the start-up line calls the job (defaults to ``kind``; a pre-training run is kind
    #: "cim" whatever its objective, which would mislead a user who runs MAE).
    label: str = ""
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

    def on_device(self, device: torch.device) -> None:
        """Called once the model is on ``device`` (move helpers such as an EMA copy)."""

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]] | None:
        """Optimizer parameter groups; ``None`` = the default decay/no-decay split.

        A group may carry ``lr_scale``: the loop multiplies the scheduled lr by it.
        """
        return None

    def after_optimizer_step(self, step: int) -> None:
        """Called after every applied optimizer update (``step`` counts updates done)."""

    #: Evaluate every this many epochs (and after the last step); 0 = never.
    eval_every_epochs: int = 0

    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        """Held-out metrics after update ``step``, called on every rank (shard and reduce
        inside), with ``model`` in eval mode."""
        return {}

    def extra_state(self) -> dict[str, Any]:
        """Small plain state of the task to checkpoint (numbers, strings, lists)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what ``extra_state`` returned."""

    def visualize(self, step: int, batch: dict[str, Any], run_dir: Path) -> None:
        """Write figures for ``batch`` (rank 0 only, every ``run.vis_every`` steps)."""

    def describe(self) -> str:
        """What the start-up line should add about this task (e.g. grid, classes); "" if
        nothing."""
        return ""

    def finish(self, run_dir: Path) -> None:
        """Called on rank 0 after the last step (e.g. to export final weights)."""

    def batch_size_of(self, batch: dict[str, Any]) -> int:
        x = batch.get("x")
        return int(x.shape[0]) if isinstance(x, torch.Tensor) else 0
