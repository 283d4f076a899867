"""Observability: running means of step metrics, JSONL and TensorBoard logs, peak memory.

Only rank 0 writes. ``metrics.jsonl`` gets one JSON object per logged step with a ``step``
field; TensorBoard (when installed and ``run.tensorboard`` is true) gets the same scalars.
"""

from __future__ import annotations

import json
import resource
import sys
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from cimpt.atomic import write_text
from cimpt.errors import CimptError


class RunningMeans:
    """Averages scalars over the steps between two log lines.

    Values may be Python numbers or 0-d tensors. Tensors are summed where they live (on a
    GPU: no synchronisation per step); ``pop`` reads all of them back with one transfer.
    """

    def __init__(self) -> None:
        self._sum: dict[str, torch.Tensor | float] = {}
        self._n: dict[str, int] = defaultdict(int)

    def add(self, values: Mapping[str, torch.Tensor | float]) -> None:
        for k, v in values.items():
            v = v.detach().float() if isinstance(v, torch.Tensor) else float(v)
            self._sum[k] = self._sum[k] + v if k in self._sum else v
            self._n[k] += 1

    def pop_lazy(self) -> dict[str, torch.Tensor | float]:
        """The means, tensors left on their device (nothing is read back)."""
        out = {k: v / self._n[k] for k, v in self._sum.items()}
        self._sum.clear()
        self._n.clear()
        return out

    def pop(self) -> dict[str, float]:
        """The means as numbers: one device-to-host transfer for all tensor values."""
        lazy = self.pop_lazy()
        out = {k: v for k, v in lazy.items() if not isinstance(v, torch.Tensor)}
        tensors = {k: v for k, v in lazy.items() if isinstance(v, torch.Tensor)}
        if tensors:
            devices = {t.device for t in tensors.values()}
            device = devices.pop() if len(devices) == 1 else torch.device("cpu")
            stacked = torch.stack([t.reshape(()).to(device) for t in tensors.values()])
            out.update(zip(tensors, stacked.tolist(), strict=True))
        return {k: out[k] for k in lazy}


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated on ``device``, or this process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def keep_records_through(path: Path, step: int) -> None:
    """Rewrite ``metrics.jsonl`` at ``path`` (atomically) keeping records with ``step <= step``.

    A run resumed from its step-``step`` checkpoint logs steps after it again; a run started
    afresh in an old directory logs every step again. Without this, the file would hold two
    records for those steps. Lines a crash cut short are dropped as well.
    """
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        try:
            keep = int(record["step"]) <= step
        except (TypeError, ValueError, KeyError):
            keep = True  # not a step record of ours: leave it alone
        if keep:
            kept.append(line + "\n")
    write_text(path, "".join(kept))


class MetricsLogger:
    """Appends to ``metrics.jsonl`` and TensorBoard; a no-op on ranks other than 0.

    ``start_step`` is the step the run starts (or resumes) from: records after it, left by an
    earlier attempt, are removed from both logs so that each step appears once.
    """

    def __init__(
        self, run_dir: Path, enabled: bool, tensorboard: bool, start_step: int = 0
    ) -> None:
        self.enabled = enabled
        self._file = None
        self._tb: Any = None
        if not enabled:
            return
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            keep_records_through(run_dir / "metrics.jsonl", start_step)
            self._file = open(run_dir / "metrics.jsonl", "a", buffering=1)  # noqa: SIM115
        except OSError as exc:
            raise CimptError(
                f"could not write {run_dir / 'metrics.jsonl'} ({exc.strerror or exc})"
            ) from None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # purge_step hides events an earlier attempt wrote after start_step.
                self._tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1)
            except ImportError:
                print(
                    "note: tensorboard is not installed; logging to metrics.jsonl only",
                    file=sys.stderr,
                )

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled or self._file is None:
            return
        record = {"step": step, **values}
        try:
            self._file.write(json.dumps(record) + "\n")
        except OSError as exc:  # a full disk, say: one line, not a traceback
            raise CimptError(
                f"could not write {self._file.name} ({exc.strerror or exc}); the checkpoints "
                "written so far are intact"
            ) from None
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
