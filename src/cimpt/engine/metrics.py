"""Observability: running means of step metrics, JSONL and TensorBoard logs, peak memory.

Only rank 0 writes. ``metrics.jsonl`` gets one JSON object per logged step with a ``step``
field (its keys are a stable interface); TensorBoard (when installed and ``run.tensorboard`` is
true) gets the same scalars under grouped tags (``tensorboard_tag``), so its dashboard shows
one section per part (``pretrain/``, ``gen/``, ``enh/``, ``val/``, ``optim/``, ``system/``)
instead of one long flat list.
"""

from __future__ import annotations

import json
import resource
import sys
from collections import defaultdict
from collections.abc import Iterator, Mapping
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


def json_lines(path: Path) -> Iterator[tuple[str, Any]]:
    """``(line, value)`` for each line of the JSON-lines file ``path`` that parses; a line a
    crash or a full disk cut short is skipped."""
    for line in path.read_text().splitlines():
        try:
            yield line, json.loads(line)
        except json.JSONDecodeError:
            continue


def keep_records_through(path: Path, step: int) -> None:
    """Rewrite ``metrics.jsonl`` at ``path`` (atomically) keeping records with ``step <= step``.

    A run resumed from its step-``step`` checkpoint logs steps after it again; a run started
    afresh in an old directory logs every step again. Without this, the file would hold two
    records for those steps. Lines a crash cut short are dropped as well.
    """
    if not path.exists():
        return
    kept = []
    for line, record in json_lines(path):
        try:
            keep = int(record["step"]) <= step
        except (TypeError, ValueError, KeyError):
            keep = True  # not a step record of ours: leave it alone
        if keep:
            kept.append(line + "\n")
    write_text(path, "".join(kept))


#: Key prefix -> TensorBoard section, first match wins (``tensorboard_tag``).
_TAG_GROUPS = (
    ("gen_", "gen"),
    ("replaced", "gen"),  # what the generator's samples changed
    ("enh_", "enh"),
    ("respix_", "enh"),
    ("revdet_", "enh"),
    ("val_", "val"),
    ("ema_val_", "val"),
    ("best_", "val"),
)
_OPTIM_KEYS = ("lr", "grad_norm", "epoch")
_SYSTEM_KEYS = ("img_per_s", "data_wait_frac", "peak_mem_mb", "skipped_images", "nan_skipped")
#: Task kind -> section of its own metrics (loss, accuracy, PSNR, ...).
_TASK_SECTION = {"cim": "pretrain", "tokenizer": "tokenizer"}


def tensorboard_tag(key: str, kind: str = "") -> str:
    """The TensorBoard tag of a ``metrics.jsonl`` key: ``section/key``.

    ``gen_loss`` -> ``gen/gen_loss``, ``val_top1`` -> ``val/val_top1``, ``lr`` ->
    ``optim/lr``, ``img_per_s`` -> ``system/img_per_s``; anything else goes to the task's
    section (``pretrain/loss``, ``tokenizer/psnr``, ``finetune/train_acc``). The key itself is
    kept whole, so a tag is found by the same name as in ``metrics.jsonl``.
    """
    for prefix, section in _TAG_GROUPS:
        if key.startswith(prefix):
            return f"{section}/{key}"
    if key in _OPTIM_KEYS:
        return f"optim/{key}"
    if key in _SYSTEM_KEYS:
        return f"system/{key}"
    return f"{_TASK_SECTION.get(kind, kind or 'train')}/{key}"


class MetricsLogger:
    """Appends to ``metrics.jsonl`` and TensorBoard; a no-op on ranks other than 0.

    ``start_step`` is the step the run starts (or resumes) from: records after it, left by an
    earlier attempt, are removed from both logs so that each step appears once.
    """

    def __init__(
        self,
        run_dir: Path,
        enabled: bool,
        tensorboard: bool,
        start_step: int = 0,
        kind: str = "",
    ) -> None:
        self.enabled = enabled
        self.kind = kind  # the task's kind: the TensorBoard section of its own metrics
        self._file = None
        self._tb: Any = None
        figures = run_dir / "figures"
        self._figures_seen: set[str] = (
            {p.name for p in figures.glob("*.png")} if figures.is_dir() else set()
        )
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
                    self._tb.add_scalar(tensorboard_tag(k, self.kind), v, step)

    def log_figures(self, step: int, folder: Path) -> None:
        """Add the PNG figures of ``folder`` not seen before to TensorBoard's Images tab,
        tagged ``figures/<name without the step number>``. The first call only takes note
        of what is there (a resumed run does not log old figures at its new step)."""
        if self._tb is None or not folder.is_dir():
            return
        import numpy as np
        from PIL import Image

        new = sorted(p for p in folder.glob("*.png") if p.name not in self._figures_seen)
        self._figures_seen.update(p.name for p in new)
        for png in new:
            tag = "figures/" + png.stem.rstrip("0123456789").rstrip("_")
            with Image.open(png) as img:
                array = np.asarray(img.convert("RGB"))
            self._tb.add_image(tag, array, step, dataformats="HWC")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
