"""A tiny task for engine tests, runnable as a script for kill/resume tests.

python toy_task.py RUN_DIR MAX_STEPS [SLEEP_S] [key=value ...]
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from cimpt.config import load_config
from cimpt.engine.checkpoint import latest_checkpoint
from cimpt.engine.loop import FitResult, Trainer, exit_status
from cimpt.engine.task import Task


class ToyData(Dataset[Any]):
    """Sample i is a fixed vector plus noise from the global torch RNG (so data order and RNG
    state both matter for the result)."""

    def __init__(self, n: int = 96) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        base = torch.arange(4, dtype=torch.float32) * (i % 7) / 7.0
        return base + 0.1 * torch.rand(4), i % 2


def toy_collate(samples: list[tuple[torch.Tensor, int]]) -> dict[str, Any]:
    return {
        "x": torch.stack([s[0] for s in samples]),
        "label": torch.tensor([s[1] for s in samples]),
        "skipped": 0,
    }


class ToyModel(nn.Module):
    def __init__(self, sleep: float = 0.0, nan_at: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.GELU(), nn.Dropout(0.2), nn.Linear(16, 1))
        self.sleep = sleep
        self.nan_at = set(nan_at)
        self.calls = 0

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        self.calls += 1
        if self.sleep:
            time.sleep(self.sleep)
        pred = self.net(batch["x"]).squeeze(-1)
        loss = ((pred - batch["label"].float()) ** 2).mean()
        if self.calls in self.nan_at:
            loss = loss * float("nan")
        return {"loss": loss, "mse": loss.detach()}


class ToyTask(Task):
    kind = "toy"
    arch_keys = ("tokenizer.width",)


def toy_config(run_dir: str, max_steps: int, extra: list[str] | tuple[str, ...] = ()) -> Any:
    return load_config(
        None,
        [
            f"run.dir={run_dir}",
            f"train.max_steps={max_steps}",
            "train.batch_size=8",
            "data.num_workers=0",
            "run.log_every=2",
            "run.ckpt_every=4",
            "run.vis_every=0",
            "run.progress=false",
            "run.tensorboard=false",
            "train.lr=0.05",
            "train.clip_grad=1.0",
            "train.warmup_epochs=0.2",
            *extra,
        ],
    )


def run_toy(
    run_dir: str,
    max_steps: int,
    extra: list[str] | tuple[str, ...] = (),
    sleep: float = 0.0,
    nan_at: tuple[int, ...] = (),
    n: int = 96,
) -> tuple[FitResult, ToyModel]:
    cfg = toy_config(run_dir, max_steps, extra)
    torch.manual_seed(123)  # same initial weights for every run
    model = ToyModel(sleep, nan_at)
    task = ToyTask(model, ToyData(n), toy_collate)
    return Trainer(task, cfg).fit(), model


def wait_for_checkpoint(run: Path, proc: subprocess.Popen[bytes], step: int) -> None:
    """Wait (at most 60 s) until ``run`` holds a checkpoint of ``step`` or later, written by
    the still-running ``proc`` (for tests that signal or kill it then)."""
    deadline = time.time() + 60
    while time.time() < deadline:
        ck = latest_checkpoint(run)
        if ck is not None and int(ck.name.split("_")[1]) >= step:
            return
        if proc.poll() is not None:
            raise AssertionError("run ended before the checkpoint appeared")
        time.sleep(0.02)
    raise AssertionError("no checkpoint in time")


if __name__ == "__main__":
    run_dir, steps = sys.argv[1], int(sys.argv[2])
    sleep = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    result, model = run_toy(run_dir, steps, sys.argv[4:], sleep)
    torch.save(model.state_dict(), f"{run_dir}/final.pt")
    print("interrupted" if result.interrupted else "finished", result.state.step)
    sys.exit(exit_status(result))
