"""What a run computed on: one line in ``<run.dir>/environment.jsonl`` per start.

``config.yaml`` keeps what the user asked for (``train.amp=auto``, ``train.device=auto``);
what that became depends on the machine: ``auto`` is bf16 autocast on a CPU with AMX or
AVX512-BF16 and fp32 on one without, so two runs of one config on two machines can differ in
their numerics. A run that is resumed elsewhere can change in the middle. So every start,
fresh or resumed, appends a record of the resolved choices (device, precision, processes,
threads, library versions) with the step it starts from; benchmark tables read it instead of
guessing from the machine.
"""

from __future__ import annotations

import json
import platform
import socket
import time
from pathlib import Path
from typing import Any

import torch

from cimpt.engine import precision
from cimpt.engine.metrics import json_lines

ENVIRONMENT_FILE = "environment.jsonl"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return precision.cpuinfo_field("model name") or platform.machine()
    return device.type


def environment_record(
    device: torch.device, amp_dtype: torch.dtype | None, world_size: int, step: int
) -> dict[str, Any]:
    """The record of one start: ``amp`` is ``"bf16"``, ``"fp16"`` or ``"fp32"`` (no autocast);
    ``precision`` the start-up line's wording; ``step`` the step the run starts from."""
    import cimpt

    return {
        "step": step,
        "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "host": socket.gethostname(),
        "device": str(device),
        "device_name": _device_name(device),
        "cpu_bf16_units": precision.cpu_bf16_units(),
        "amp": precision.amp_name(amp_dtype),
        "precision": precision.describe(amp_dtype, device),
        "world_size": world_size,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cimpt": cimpt.__version__,
        "python": platform.python_version(),
    }


def append_environment(run_dir: str | Path, record: dict[str, Any]) -> None:
    """Append ``record`` as one line of ``environment.jsonl`` (one ``write`` of one line, so a
    killed process leaves whole lines only, as ``metrics.jsonl`` does)."""
    with (Path(run_dir) / ENVIRONMENT_FILE).open("a") as f:
        f.write(json.dumps(record) + "\n")


def record_start(
    run_dir: str | Path,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    world_size: int,
    step: int,
) -> str | None:
    """Append this start's record; return a one-line note when a resumed run now computes in
    another precision than its last start did (``train.amp=auto`` on another kind of machine),
    since the run then goes on with other numerics, though from the same weights."""
    before = read_environment(run_dir)
    record = environment_record(device, amp_dtype, world_size, step)
    append_environment(run_dir, record)
    if step == 0 or not before or before[-1]["amp"] == record["amp"]:
        return None
    return (
        f"note: this run computed in {before[-1]['precision']} up to step {step} and goes on "
        f"in {record['precision']}; set train.amp to keep one precision"
    )


def read_environment(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a run, first start first (``[]`` for a run that predates the file). A
    line that is not a whole record (a write cut short by a full disk) is skipped: this file
    describes the run and must never stop it from resuming."""
    path = Path(run_dir) / ENVIRONMENT_FILE
    if not path.is_file():
        return []
    return [
        rec
        for _, rec in json_lines(path)
        if isinstance(rec, dict) and {"amp", "precision"} <= rec.keys()
    ]


def run_precision(run_dir: str | Path) -> str:
    """``"bf16"`` / ``"fp16"`` / ``"fp32"`` when every start of the run computed in it,
    ``"mixed: ..."`` when starts differed, ``"unrecorded"`` for a run without the file."""
    amps = list(dict.fromkeys(r["amp"] for r in read_environment(run_dir)))
    if not amps:
        return "unrecorded"
    return amps[0] if len(amps) == 1 else "mixed: " + ", ".join(amps)
