"""``cimpt plot RUN``: the training curves of a run's ``metrics.jsonl`` in one PNG.

    cimpt plot RUN_DIR [--out PNG] [--keys gen_acc replaced respix_loss ...]

One panel per key (default: the losses and accuracies any objective logs, those present in
the run); written to ``RUN_DIR/figures/curves.png`` unless ``--out`` says otherwise. A line
that a killed run cut short is skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

from cimpt.errors import CimptError

DEFAULT_KEYS = (
    "loss",
    "gen_loss",
    "gen_acc",
    "replaced",
    "respix_loss",
    "respix_vs_zero",
    "revdet_acc",
    "revdet_margin",
    "mae_loss",
    "simmim_loss",
    "beit_acc",
    "val_top1",
    "val_miou",
    "lr",
)


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise CimptError(f"{run_dir} is not a run directory (no metrics.jsonl)")
    lines = path.read_text().splitlines()
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line a killed run cut short
    return records


def plot(records: list[dict[str, float]], keys: list[str], out: Path, title: str) -> Path:
    """One panel per key present in ``records``, saved atomically enough (one write) to
    ``out``; a key no record has is left out, none at all is an error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    asked, keys = keys, [k for k in keys if any(k in r for r in records)]
    if not keys:
        raise CimptError(f"--keys: none of {', '.join(asked)} is in metrics.jsonl")
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
    plt.close(fig)
    return out


def plot_command(run_dir: str, out: str = "", keys: list[str] | None = None) -> Path:
    """``cimpt plot``: the curves of ``run_dir`` into ``out`` (default figures/curves.png)."""
    run = Path(run_dir).expanduser()
    target = Path(out) if out else run / "figures" / "curves.png"
    return plot(read_metrics(run), list(keys or DEFAULT_KEYS), target, str(run))
