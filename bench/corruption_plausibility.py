"""How plausible is CIM's corruption? The generator's samples against the originals (issue 17).

For a trained pre-training run, on ``--n`` images of a folder: the golden ids ``z``, the
generator's logits at the run's masks, then for each sampling setting (temperature, top-k,
nucleus; one change at a time) one draw ``z_hat``. A replaced token is judged by what the
enhancer will see: the PSNR, per token cell, of ``decode(z_hat)`` against ``decode(z)`` (both
the tokenizer's decodings, so the tokenizer's own error does not count). Reported per
setting: the share of masked tokens replaced, the mean cell PSNR of the replaced ones, and
the share of replaced tokens that decode "close" (cell PSNR >= ``--close-db``). Two anchors
frame the numbers: ``uniform`` (a random id: no generator at all) and the generator's argmax.

    python bench/corruption_plausibility.py --run RUN_DIR [--data DIR] [--n 1024]

writes ``bench/results/corruption_plausibility_<run name>.json`` and prints a markdown table.
No training: a few forward passes, about a minute on 2 CPU cores at 32 px.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cimpt.errors import CimptError
from records import git_commit, write_record

# (label, temperature, top_k, top_p); None temperature: uniform random ids (the floor).
SETTINGS: tuple[tuple[str, float | None, int, float], ...] = (
    ("uniform random id", None, 0, 1.0),
    ("T=1 (default)", 1.0, 0, 1.0),
    ("T=0.5", 0.5, 0, 1.0),
    ("T=0.25", 0.25, 0, 1.0),
    ("T=1, top-k 50", 1.0, 50, 1.0),
    ("T=1, top-k 10", 1.0, 10, 1.0),
    ("T=1, top-p 0.9", 1.0, 0, 0.9),
    ("T=1, top-p 0.5", 1.0, 0, 0.5),
    ("argmax (T=0)", 0.0, 0, 1.0),
)


def cell_psnr(a: torch.Tensor, b: torch.Tensor, grid: int) -> torch.Tensor:
    """PSNR (dB, images in [0, 1]) of each token cell: ``[B, 3, R, R]`` x 2 -> ``[B, g, g]``."""
    bsz, ch, r, _ = a.shape
    p = r // grid
    d = (a.float() - b.float()).reshape(bsz, ch, grid, p, grid, p)
    mse = d.pow(2).mean(dim=(1, 3, 5)).clamp_min(1e-10)
    return -10 * torch.log10(mse)


def draw(
    model: Any,
    logits: torch.Tensor,
    z: torch.Tensor,
    mask: torch.Tensor,
    setting: tuple[str, float | None, int, float],
) -> torch.Tensor:
    """One corruption ``z_hat [B, g, g]`` under ``setting`` (model attributes restored)."""
    _, temperature, top_k, top_p = setting
    if temperature is None:
        return torch.where(mask, torch.randint_like(z, logits.shape[-1]), z)
    saved = (model.temperature, model.top_k, model.top_p)
    model.temperature, model.top_k, model.top_p = temperature, top_k, top_p
    try:
        return model.sample(logits, z, mask)
    finally:
        model.temperature, model.top_k, model.top_p = saved


def load_run(run: str, data: str) -> tuple[Any, Any]:
    """The CIM model of a pre-training run (weights loaded, eval mode) and its image loader."""
    from cimpt.config import from_dict
    from cimpt.data import build_loader
    from cimpt.engine.checkpoint import load_modules, open_checkpoint
    from cimpt.pretrain import build_cim_task

    ckpt = open_checkpoint(run, ("cim",), "--run", "a CIM pre-training checkpoint")
    if ckpt.config.get("objective") not in ("respix", "revdet"):
        raise CimptError(f"--run: {ckpt.path} is a '{ckpt.config.get('objective')}' run, not CIM")
    cfg = from_dict(ckpt.config, ["data.num_workers=1", f"data.path={data}"])
    task = build_cim_task(cfg)
    load_modules(task.saved_modules(), ckpt)
    task.model.eval()
    loader = build_loader(task.dataset, 128, 1, task.collate, None, 0, drop_last=False)
    return task.model, loader


@torch.no_grad()
def measure(model: Any, loader: Any, n: int, close_db: float) -> list[dict[str, Any]]:
    """Accumulate, per setting, masked / replaced / close counts and the replaced cells' PSNR."""
    torch.manual_seed(0)
    sums = {s[0]: {"masked": 0, "replaced": 0, "close": 0, "psnr": 0.0} for s in SETTINGS}
    gen_hits, seen = 0, 0
    for batch in loader:
        x, mask = batch["x"], batch["mask"].bool()
        z = model.golden_tokens(batch["x_tok"])
        logits = model.generator(x, mask)
        gen_hits += int(((logits.argmax(-1) == z) & mask).sum())
        ref = model.decode_image(z)
        for s in SETTINGS:
            z_hat = draw(model, logits, z, mask, s)
            replaced = (z_hat != z) & mask
            psnr = cell_psnr(model.decode_image(z_hat), ref, z.shape[-1])[replaced]
            acc = sums[s[0]]
            acc["masked"] += int(mask.sum())
            acc["replaced"] += int(replaced.sum())
            acc["close"] += int((psnr >= close_db).sum())
            acc["psnr"] += float(psnr.sum())
        seen += x.shape[0]
        if seen >= n:
            break
    masked = max(1, sums[SETTINGS[0][0]]["masked"])
    return [
        {
            "setting": label,
            "images": seen,
            "generator_acc_masked": gen_hits / masked,
            "replaced_of_masked": v["replaced"] / max(1, v["masked"]),
            "replaced_cell_psnr_db": v["psnr"] / max(1, v["replaced"]),
            "close_of_replaced": v["close"] / max(1, v["replaced"]),
        }
        for label, v in sums.items()
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a CIM pre-training run directory")
    ap.add_argument("--data", default="~/.cache/cimpt/data/CIFAR-10-images/test")
    ap.add_argument("--n", type=int, default=1024, help="images to measure on")
    ap.add_argument("--close-db", type=float, default=20.0)
    ap.add_argument("--out", default="")
    a = ap.parse_args(argv)
    t0 = time.time()
    try:
        model, loader = load_run(a.run, str(Path(a.data).expanduser()))
    except CimptError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = measure(model, loader, a.n, a.close_db)
    print(f"run {a.run}: generator accuracy on masked tokens {rows[0]['generator_acc_masked']:.1%}")
    print(
        "| setting | replaced / masked | cell PSNR of replaced (dB) | "
        f"close (>= {a.close_db:g} dB) |"
    )
    print("|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['setting']} | {r['replaced_of_masked']:.1%} | "
            f"{r['replaced_cell_psnr_db']:.2f} | {r['close_of_replaced']:.1%} |"
        )
    out = a.out or f"bench/results/corruption_plausibility_{Path(a.run).resolve().name}.json"
    write_record(
        {
            "run": str(a.run),
            "close_db": a.close_db,
            "rows": rows,
            "commit": git_commit(),
            "wallclock_s": round(time.time() - t0, 1),
        },
        out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
