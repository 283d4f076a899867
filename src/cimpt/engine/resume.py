"""Resuming a run: find the checkpoint, check it was made by the same model, restore it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from cimpt.engine.checkpoint import (
    latest_checkpoint,
    load_into,
    load_meta,
    load_state,
    load_tensors,
    resolve_checkpoint,
)
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


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def arch_differences(
    stored: Mapping[str, Any], current: Mapping[str, Any], keys: Sequence[str]
) -> list[str]:
    """``key: checkpoint X vs config Y`` for each model-defining key that differs."""
    a, b = _flatten(stored), _flatten(current)
    diffs = []
    for k in sorted(set(a) | set(b)):
        if any(k == p or k.startswith(p + ".") for p in keys) and a.get(k) != b.get(k):
            diffs.append(f"{k}: checkpoint {a.get(k)!r} vs config {b.get(k)!r}")
    return diffs


def check_same_model(meta: Mapping[str, Any], cfg_dict: Mapping[str, Any], task: Task) -> None:
    if meta.get("kind") != task.kind:
        raise CimptError(
            f"cannot resume: the checkpoint was written by a '{meta.get('kind')}' run, "
            f"this is a '{task.kind}' run"
        )
    diffs = arch_differences(meta.get("config", {}), cfg_dict, task.arch_keys)
    if diffs:
        raise CimptError("cannot resume with a different model config: " + "; ".join(diffs[:6]))


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

    meta = load_meta(ckpt)
    check_same_model(meta, to_dict(cfg), task)
    tensors = load_tensors(ckpt)
    for name, module in task.saved_modules().items():
        load_into(module, tensors, name)
    state = load_state(ckpt)
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    task.load_extra_state(dict(state.get("task", {})))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Rank 0's RNG was saved; give the other ranks streams of their own again.
        rank = torch.distributed.get_rank()
        if rank:
            torch.manual_seed(int(cfg.seed) + rank + 7919 * int(state["loop"]["step"]))
    return state_cls(**state["loop"])
