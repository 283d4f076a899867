"""Plot training curves from a run's metrics.jsonl into a PNG.

    python bench/plot_curves.py RUN_DIR OUT.png [--keys gen_acc replaced respix_loss ...]

Used for the "learning, not just running" figure in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

DEFAULT_KEYS = ("gen_loss", "gen_acc", "replaced", "respix_loss", "revdet_acc", "revdet_pos")


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line a killed run cut short
    return records


def plot(records: list[dict[str, float]], keys: list[str], out: Path, title: str) -> None:
    keys = [k for k in keys if any(k in r for r in records)]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        pts = [(r["step"], r[key]) for r in records if key in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--keys", nargs="*", default=list(DEFAULT_KEYS))
    p.add_argument("--title", default="")
    a = p.parse_args()
    plot(read_metrics(a.run_dir), a.keys, a.out, a.title or str(a.run_dir))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
