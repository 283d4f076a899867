"""Resuming a run: find the checkpoint, check it was made by the same model, restore it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import torch

from cimpt.engine.checkpoint import (
    config_differences,
    latest_checkpoint,
    load_modules,
    load_state,
    open_checkpoint,
    resolve_checkpoint,
)
from cimpt.engine.distributed import distributed_rank_world
from cimpt.engine.rng import set_rng_state
from cimpt.engine.task import Task
from cimpt.errors import CimptError

S = TypeVar("S")


def find_resume_checkpoint(resume: str, run_dir: Path) -> Path | None:
    """``''`` -> none; ``auto`` -> newest in ``run_dir`` (none on a fresh run); else a path."""
    if not resume:
        return None
    if resume == "auto":
        return latest_checkpoint(run_dir)
    return resolve_checkpoint(resume)


def restore(
    ckpt: Path,
    task: Task,
    cfg: Any,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    state_cls: type[S],
    device: torch.device,
) -> S:
    """Load weights, optimizer, scaler, RNG and loop position; return the loop state."""
    from cimpt.config import to_dict

    saved = open_checkpoint(ckpt, (task.kind,), "cannot resume", f"a '{task.kind}' checkpoint")
    diffs = config_differences(saved.config, to_dict(cfg), task.arch_keys)
    if diffs:
        raise CimptError("cannot resume with a different model config: " + "; ".join(diffs[:6]))
    load_modules(task.saved_modules(), saved)
    state = load_state(saved.path)
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    task.load_extra_state(dict(state.get("task", {})))
    # Rank 0's RNG was saved; give the other ranks streams of their own again.
    rank = distributed_rank_world()[0]
    if rank:
        torch.manual_seed(cfg.seed + rank + 7919 * int(state["loop"]["step"]))
    return state_cls(**state["loop"])
