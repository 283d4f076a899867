"""What every benchmark record shares: the git state it was measured at, and writing it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def git(*cmd: str) -> str:
    """Output of ``git <cmd>`` in the repository, or "" when git is unavailable."""
    try:
        out = subprocess.run(["git", *cmd], capture_output=True, text=True, cwd=ROOT, timeout=10)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def git_commit() -> str:
    return git("rev-parse", "HEAD") or "unknown"


def under_root(path: str | Path) -> Path:
    """``path``, a relative one taken under the repository root (where results are kept)."""
    p = Path(path)
    return p if p.is_absolute() else ROOT / p


def write_record(record: dict[str, Any], out: str | Path) -> Path:
    """Write ``record`` as indented JSON (relative paths are under the repository root)."""
    path = under_root(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def run_meta(t0: float, **extra: Any) -> dict[str, Any]:
    """What a study record's ``meta`` starts with: commit, date, minutes since ``t0`` (a
    ``time.time()``), the command line and the CPU count; then ``extra``."""
    return {
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "wallclock_min": round((time.time() - t0) / 60, 1),
        "command": " ".join(sys.argv),
        "cpu_count": os.cpu_count(),
        **extra,
    }


def write_study(out: str | Path, stem: str, payload: Any, table: str) -> Path:
    """A study's results: ``<out>/<stem>.json`` (``payload``) and ``<out>/<stem>.md``
    (``table``, also printed); a relative ``out`` is under the repository root."""
    folder = under_root(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (folder / f"{stem}.md").write_text(table)
    print(table)
    return folder
