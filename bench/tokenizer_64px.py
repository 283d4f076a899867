"""Tokenizer quality at 64 px: held-out PSNR against training time, per recipe (issue 17, item 4).

A CIM tokenizer for 64 px images trained the way the 32 px CIFAR one is (5 min,
``configs/cifar10_tokenizer.yaml data.img_size=64 tokenizer.downsample=8``, 400 steps of 64)
reached 17.5 dB: colourless blurs. The target is at least 22 dB (``verdict()``'s ``good``)
with colour kept, in a budget a user accepts (about 20 CPU-minutes). This study gives each
recipe the same wall-clock budget and measures the curve PSNR / codebook usage / perplexity
against minutes of training, with the user-facing ``cimpt`` commands (and an in-process
conversion of checkpoints to tokenizer files, step 4):

1. **Recipes** (``RECIPES``): one change at a time from ``base-ds8``, the issue's setting
   (``BASE``: 64 px views, 8 px per token = an 8x8 grid, width 64, 1,024 codes, batch 64, lr
   2e-3). ``ds4`` (4 px per token, a 16x16 grid), ``ds8-w128`` (width 128),
   ``ds8-512codes``, ``ds8-lr4e-3``; for colour, one change each from ``ds4``:
   ``ds4-chroma4`` (colour errors weighted 4x, ``tokenizer.chroma_weight``) and ``ds4-dim8``
   (8-dimensional codes). ``--add-recipe "NAME: key=value key=value"`` adds one
   (e.g. the best changes combined), ``--recipes a,b`` picks some.
2. **Calibration.** In one process, one training step of every recipe is built from exactly
   its job's config and timed round-robin (``compare_methods._stepper``: batch loading
   included), with all ``--threads``; the median is its seconds per step. Saved to
   ``<work>/calibration.json``; a recipe missing there is calibrated on the next run.
3. **Training.** Each recipe alone on the machine, one after the other, all threads:
   ``cimpt tokenizer train`` for ``max_steps = budget / s_per_step`` steps, warm-up 5 % of
   them, then cosine; a checkpoint every ``max_steps / 5`` steps (all kept). Its wall time
   and CPU time (user + sys of the process and its data worker, ``getrusage``) are measured.
4. **Evaluation.** ``cimpt tokenizer eval run/checkpoints/step_N data.val_path=...
   run.dir=run/evals/step_N`` for every checkpoint (it rebuilds the tokenizer from the run
   config the checkpoint carries and finds the run's ``config.yaml`` two levels up). The
   last one's ``tokenizer_eval.json`` is copied next to the run's ``tokenizer.safetensors``, where
   ``cimpt pretrain`` looks for the weak-tokenizer verdict. The figure of the final
   tokenizer reconstructs 16 held-out frames spread over the whole folder (the command draws
   the first 16, which are near-identical consecutive video frames): one more ``cimpt
   tokenizer eval`` on a folder of links to them, its ``tokenizer_recon.png`` copied next to
   the tokenizer and into ``<out>/tokenizer_64px/<recipe>_recon.png``.

A curve point's minutes are its steps times the job's measured seconds per step (wall, and
CPU likewise): the step rate of one recipe is constant. The points lie on **one** schedule
of the full budget, so a middle point is a run at a still-high lr, not the best a shorter
budget could reach (that would take its own run).

**Data.** Photos, not CIFAR-10: upsampled 32 px CIFAR images hold no detail at 64 px, so they
flatter a tokenizer (and a user's 64 px photos are downscaled photos, not upsampled thumbnails).
Default: the CamVid frames unpacked at ``~/.cache/cimpt/data/camvid`` (240x180 road scenes),
training on ``train/images`` (367 frames) and evaluating on ``test/images`` (233 frames:
171 of a drive training never sees, 62 of a later stretch of one training drive).
``val/images`` is not added: ``data.path`` is one folder, scanned recursively, and
``camvid/`` also holds the label PNGs; to train on both, point ``--data`` at a folder of links
to both. Training views are random-resized crops of 35 % to 100 % of a frame
(``data.crop_scale=[0.35,1.0]``, the pre-training default) scaled to 64 px, i.e. photos
downscaled about 2 to 3.5x, as a user's 64 px images are; the held-out view (resize the short
side to 64, centre crop) covers 75 % of a frame, inside that range. Crops below about 10 % of
a frame would be upsampled, softer views than any a user's 64 px photos give.

**Budget.** ``--budget-min`` (default 20) is wall-clock per recipe with every thread of the
machine, so it costs up to ``threads`` x that in CPU-minutes: on the 2-core dev machine a
20-CPU-minute budget is about ``--budget-min 10``; the table reports both, and the curve reads
PSNR at any CPU time along the run.

Presets:

- ``full`` (default): 20 min per recipe. Estimated, not measured: 5 recipes x 20 min = 100
  min of training, plus about 2 min of calibration (5 x 10 timed steps) and about 12 min of
  evaluations (5 checkpoints and one figure per recipe, each 15-25 s: process start and 233
  frames; 12 s each for a width-8 tokenizer in a smoke run), so about **2 h** on the 2-core
  dev machine (longer if other jobs share the CPU: the step budget is fixed by
  the calibration, so load later stretches wall time, not the steps).
- ``quick``: a tiny VQ-VAE (width 8, 16 codes) on 16 px views, 4 steps per recipe, two points;
  run in-process by the test suite in seconds. Its numbers mean nothing.

Finished jobs are reused and an interrupted one resumes (``resume=auto``), so the study can
run in parts; a resumed job's rate is measured over the steps of its last part.

    python bench/tokenizer_64px.py [--preset full|quick] [--budget-min 20] \
        [--data DIR] [--val-data DIR] [--recipes a,b,...] [--add-recipe "NAME: k=v k=v"] \
        [--threads N] [--work runs/tokenizer_64px] [--out docs/results]

writes ``<out>/tokenizer_64px.json`` (meta and one record per recipe: overrides, s/step, steps,
images seen, wall and CPU minutes, the curve, the final verdict and figure) and
``<out>/tokenizer_64px.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shlex
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cifar10_evidence as evidence
from cifar10_evidence import Job, count_images, run_job
from compare_methods import _stepper, override_value, time_round_robin
from records import ROOT, git_commit, under_root, write_study

CAMVID = Path("~/.cache/cimpt/data/camvid").expanduser()
CONFIG = "configs/cifar10_tokenizer.yaml"
STEM = "tokenizer_64px"
WARMUP_FRAC = 0.05  # share of each run's steps spent warming up
# The setting at 64 px: the base every recipe changes one thing of. The 8 px ViT patch
# makes the 8x8 grid whose tokenizer view is 64 px (grid x downsample; README, "Other image
# sizes"); ds4 changes both to keep 64 px views.
BASE = (
    "data.img_size=64",
    "enhancer.patch_size=8",
    "tokenizer.downsample=8",
    "tokenizer.width=64",
    "tokenizer.vocab_size=1024",
    "train.batch_size=64",
    "train.lr=2e-3",
    "data.crop_scale=[0.35,1.0]",
)
DS4 = ("enhancer.patch_size=4", "tokenizer.downsample=4")
RECIPES: dict[str, tuple[str, ...]] = {
    "base-ds8": (),
    "ds4": DS4,
    "ds8-w128": ("tokenizer.width=128",),
    "ds8-512codes": ("tokenizer.vocab_size=512",),
    "ds8-lr4e-3": ("train.lr=4e-3",),
    # For colour (issue 17: ds4 keeps 54 %), one change each from ds4:
    "ds4-chroma4": (*DS4, "tokenizer.chroma_weight=4"),
    "ds4-dim8": (*DS4, "tokenizer.embed_dim=8"),
}


@dataclass(frozen=True)
class Preset:
    """Budget per recipe, calibration length, checkpoints along each run, size overrides."""

    budget_s: float
    calib_steps: int  # timed rounds of the calibration (after CALIB_WARMUP)
    points: int  # checkpoints (curve points) per run
    min_steps: int = 1
    max_steps: int = 0  # a cap on the steps (0: none)
    extra: tuple[str, ...] = ()


PRESETS = {
    "full": Preset(1200.0, 8, 5),
    "quick": Preset(
        1.0, 1, 2, min_steps=4, max_steps=4,
        extra=("data.img_size=16", "train.batch_size=4", "tokenizer.width=8",
               "tokenizer.res_blocks=1", "tokenizer.embed_dim=8", "tokenizer.vocab_size=16"),
    ),
}  # fmt: skip


@dataclass(frozen=True)
class Study:
    """Where the study reads and writes, and its budgets."""

    data: Path
    val: Path
    work: Path
    preset: Preset
    n_train: int
    threads: int
    budget_s: float

    def steps(self, s_per_step: float) -> int:
        """Steps that fill the budget, within the preset's bounds."""
        steps = max(self.preset.min_steps, int(self.budget_s / s_per_step))
        return min(steps, self.preset.max_steps) if self.preset.max_steps else steps

    def batch(self, overrides: tuple[str, ...]) -> int:
        return int(override_value([*BASE, *self.preset.extra, *overrides], "train.batch_size"))

    def train_argv(self, overrides: tuple[str, ...], run: Path, steps: int) -> list[str]:
        """``cimpt tokenizer train`` of one recipe: no evaluation or figure inside the timed
        job (``data.val_path=``, ``run.vis_every=0``), a checkpoint per curve point."""
        per_epoch = max(1, self.n_train // self.batch(overrides))
        warmup = max(1, round(WARMUP_FRAC * steps)) / per_epoch
        return [
            "tokenizer", "train", CONFIG, *BASE, *self.preset.extra, *overrides,
            f"run.dir={run}", f"data.path={self.data}", "data.val_path=",
            f"train.max_steps={steps}", f"train.warmup_epochs={warmup:.6g}",
            f"run.ckpt_every={math.ceil(steps / self.preset.points)}",
            f"run.keep_last={self.preset.points + 2}", "run.vis_every=0",
            "run.progress=false", "run.tensorboard=false", "data.num_workers=1",
        ]  # fmt: skip


# ---- calibration ---------------------------------------------------------------------------
def calibrate(s: Study, recipes: dict[str, tuple[str, ...]]) -> dict[str, float]:
    """Seconds per training step of each recipe (module doc, 2), kept in
    ``<work>/calibration.json``; only recipes missing there are timed."""
    import torch

    from cimpt.tokenizers.train import build_tokenizer_task

    path = s.work / "calibration.json"
    record = json.loads(path.read_text()) if path.exists() else {"s_per_step": {}, "samples": {}}
    todo = [n for n in recipes if n not in record["s_per_step"]]
    if not todo:
        return record["s_per_step"]
    torch.set_num_threads(s.threads)
    steps: dict[str, Callable[[], object]] = {
        n: _stepper(s.train_argv(recipes[n], s.work / "calibration" / n, 1), build_tokenizer_task)
        for n in todo
    }
    times = time_round_robin(steps, s.preset.calib_steps)
    record["s_per_step"].update({n: statistics.median(v) for n, v in times.items()})
    record["samples"].update(times)
    record.update(
        threads=s.threads, commit=git_commit(), loadavg_after=os.getloadavg(),
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    )  # fmt: skip
    path.write_text(json.dumps(record, indent=2) + "\n")
    return record["s_per_step"]


# ---- training ------------------------------------------------------------------------------
def cpu_seconds() -> float:
    """User + sys CPU seconds of this process and its finished children (a subprocess job,
    with its DataLoader worker, counts once it has been waited for)."""
    usage = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def _checkpoint_step(path: Path) -> int:
    return int(path.name.removeprefix("step_"))


def timed_job(job: Job, threads: int, logs: Path) -> dict[str, Any]:
    """Run (or reuse) a training job; its cost ``{wall_s, cpu_s, steps_timed, ...}``, kept in
    ``<run>/cost.json``. A resumed job is timed over the steps of its last part."""
    from cimpt.engine.checkpoint import latest_checkpoint

    cost_file = job.run_dir / "cost.json"
    done = (job.run_dir / job.done_file).exists()
    prior = None if done else latest_checkpoint(job.run_dir)
    start = _checkpoint_step(prior) if prior else 0
    steps = int(override_value(job.argv, "train.max_steps"))
    cpu0 = cpu_seconds()
    run_job(job, threads, logs)
    if job.reused:
        if cost_file.exists():
            return {**json.loads(cost_file.read_text()), "reused": True}
        # a run made elsewhere: the wall time its evidence_job.json kept, no CPU time
        return {"wall_s": job.wallclock_s, "cpu_s": None, "steps_timed": steps, "reused": True}
    cost = {
        "wall_s": round(job.wallclock_s, 2),
        "cpu_s": round(cpu_seconds() - cpu0, 2),
        "steps_timed": steps - start,
        "resumed_from_step": start,
        "threads": threads,
    }
    cost_file.write_text(json.dumps(cost, indent=2) + "\n")
    return {**cost, "reused": False}


# ---- evaluation ----------------------------------------------------------------------------
def evaluate_run(s: Study, name: str, run: Path) -> list[dict[str, Any]]:
    """``cimpt tokenizer eval`` of every checkpoint of a finished run, oldest first."""
    from cimpt.engine.checkpoint import list_checkpoints

    results = []
    for ckpt in list_checkpoints(run):
        out = run / "evals" / ckpt.name
        # the run's config.yaml, two levels up, gives the view size and batch
        argv = ["tokenizer", "eval", str(ckpt), f"data.val_path={s.val}", f"run.dir={out}",
                "data.num_workers=1"]  # fmt: skip
        run_job(Job(f"{name}_eval_{ckpt.name}", argv, out, "tokenizer_eval.json"),
                s.threads, s.work / "logs")  # fmt: skip
        res = json.loads((out / "tokenizer_eval.json").read_text())
        figure = str(out / "tokenizer_recon.png")
        results.append({**res, "step": _checkpoint_step(ckpt), "figure": figure})
    return results


def figure_frames(s: Study, k: int = 16) -> Path:
    """``k`` held-out images spread evenly over the sorted folder, linked into one folder: the
    input of the reconstruction figures (the first ``k`` are consecutive video frames that
    look alike)."""
    from cimpt.data.folder import scan_images

    folder = s.work / "figure_frames"
    if not folder.is_dir():
        files = scan_images(s.val)
        tmp = s.work / ".figure_frames.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for i in range(min(k, len(files))):
            rel = files[i * len(files) // min(k, len(files))]
            (tmp / f"{i:02d}_{rel.name}").symlink_to(s.val / rel)
        tmp.rename(folder)
    return folder


def publish_final(s: Study, name: str, run: Path, final: dict[str, Any], out: Path) -> str:
    """The last checkpoint's evaluation next to the exported tokenizer (``cimpt pretrain``
    reads its verdict there); the final tokenizer's reconstructions of :func:`figure_frames`
    (``run/figure/tokenizer_recon.png``, copied to ``<out>/tokenizer_64px/``): its path."""
    src = Path(final["figure"]).parent
    shutil.copyfile(src / "tokenizer_eval.json", run / "tokenizer_eval.json")
    fig = run / "figure"
    frames = figure_frames(s)
    argv = ["tokenizer", "eval", str(run / "tokenizer.safetensors"),
            f"data.val_path={frames}", f"run.dir={fig}", "data.num_workers=0"]  # fmt: skip
    run_job(Job(f"{name}_figure", argv, fig, "tokenizer_recon.png"), s.threads, s.work / "logs")
    shutil.copyfile(fig / "tokenizer_recon.png", run / "tokenizer_recon.png")
    dest = out / STEM / f"{name}_recon.png"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(fig / "tokenizer_recon.png", dest)
    return str(dest.relative_to(ROOT)) if dest.is_relative_to(ROOT) else str(dest)


def curve_point(ev: dict[str, Any], cost: dict[str, Any], batch: int) -> dict[str, Any]:
    """One point: minutes (wall and CPU) at the job's measured rate, PSNR, usage, perplexity."""
    steps_timed = max(1, cost["steps_timed"])
    cpu = cost["cpu_s"]
    return {
        "minutes": round(ev["step"] * cost["wall_s"] / steps_timed / 60, 4),
        "cpu_minutes": None if cpu is None else round(ev["step"] * cpu / steps_timed / 60, 4),
        "steps": ev["step"],
        "images_seen": ev["step"] * batch,
        "psnr": round(float(ev["psnr"]), 3),
        "usage": round(float(ev["usage"]), 4),
        "perplexity": round(float(ev["perplexity"]), 2),
        "colour_kept": _colour(ev),
    }


def study_recipe(
    s: Study, name: str, overrides: tuple[str, ...], s_per_step: float, out: Path
) -> dict[str, Any]:
    """Train one recipe for its step budget, evaluate its checkpoints; its record."""
    from cimpt.engine.environment import run_precision
    from cimpt.tokenizers.evaluate import verdict

    run = s.work / name
    steps = s.steps(s_per_step)
    argv = s.train_argv(overrides, run, steps)
    cost = timed_job(Job(f"{name}_train", argv, run, "tokenizer.safetensors"), s.threads,
                     s.work / "logs")  # fmt: skip
    evals = evaluate_run(s, name, run)
    batch = s.batch(overrides)
    curve = [curve_point(ev, cost, batch) for ev in evals]
    final = evals[-1]
    figure = publish_final(s, name, run, final, out)
    return {
        "recipe": name,
        "overrides": list(overrides),
        "view_px": final["img_size"],
        "grid": final["img_size"] // int(override_value(argv, "tokenizer.downsample")),
        "s_per_step_calibrated": round(s_per_step, 4),
        "s_per_step_measured": round(cost["wall_s"] / max(1, cost["steps_timed"]), 4),
        "steps": final["step"],  # the run's own (a reused run keeps the steps it was given)
        "batch": batch,
        "images_seen": final["step"] * batch,
        "wall_minutes": curve[-1]["minutes"],
        "cpu_minutes": curve[-1]["cpu_minutes"],
        "cost": cost,
        # train.amp stays the config's auto (what a user's run gets on this machine): bf16
        # autocast on CPUs with AMX or AVX512-BF16, so the budget's steps depend on it
        "precision": run_precision(run),
        "curve": curve,
        "final": {
            **{k: final[k] for k in ("psnr", "usage", "perplexity", "n_images", "data")},
            "colour_kept": _colour(final),
        },
        "verdict": verdict(float(final["psnr"]), float(final["usage"]), _colour(final)),
        "figure": figure,
        "run_dir": str(run),
        "argv": argv,
    }


# ---- the table -----------------------------------------------------------------------------
def first_at_target(curve: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first curve point that ``verdict()`` calls good (PSNR, codebook usage, colour)."""
    from cimpt.tokenizers.evaluate import verdict

    good = (verdict(p["psnr"], p["usage"], p.get("colour_kept")) == "good" for p in curve)
    return next((p for p, ok in zip(curve, good, strict=True) if ok), None)


def _colour(ev: dict[str, Any]) -> float | None:
    """The evaluation's ``colour_kept`` (None for an evaluation made before it was measured)."""
    return None if ev.get("colour_kept") is None else round(float(ev["colour_kept"]), 3)


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.0f} %"


def _cpu(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}"


def table_row(r: dict[str, Any]) -> str:
    return (
        f"| {r['recipe']} | {r['view_px']} px / {r['grid']}x{r['grid']} | {r['steps']} | "
        f"{r['images_seen']} | {r['s_per_step_calibrated']:.3f} / {r['s_per_step_measured']:.3f} "
        f"| {r['wall_minutes']:.1f} | {_cpu(r['cpu_minutes'])} | {r['final']['psnr']:.2f} | "
        f"{100 * r['final']['usage']:.0f} % | {r['final']['perplexity']:.0f} | "
        f"{_pct(r['final'].get('colour_kept'))} | {r['verdict']} |"
    )


def curve_line(r: dict[str, Any]) -> str:
    pts = "; ".join(
        f"{p['minutes']:.1f} min ({_cpu(p['cpu_minutes'])} CPU-min, {p['steps']} steps): "
        f"{p['psnr']:.2f} dB, {100 * p['usage']:.0f} %, ppl {p['perplexity']:.0f}, "
        f"colour {_pct(p.get('colour_kept'))}"
        for p in r["curve"]
    )
    hit = first_at_target(r["curve"])
    reach = "never good" if hit is None else f"good from {_cpu(hit['cpu_minutes'])} CPU-min"
    return f"- {r['recipe']}: {pts} — {reach}"


def markdown(records: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """Summary table, the curve of every recipe, the best recipe and its figures."""
    lines = [
        f"Tokenizer quality at 64 px, preset {meta['preset']}, commit {meta['commit'][:7]}, "
        f"{meta['date']}; {meta['budget_s'] / 60:.3g} min wall per recipe with "
        f"{meta['threads']} threads ({meta['cpu_count']} CPUs); train {meta['data']} "
        f"({meta['n_train']} images), held-out {meta['val_data']}; recipes done: "
        f"{meta['progress']}. Target: `good` (>= 22 dB, >= 25 % of the codes used, >= 75 % of "
        "the colour kept) in at most 20 CPU-minutes.",
        "",
        "| recipe | view / grid | steps | images seen | s/step (calibrated / measured) | "
        "wall min | CPU min | final PSNR (dB) | usage | perplexity | colour kept | verdict |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        *[table_row(r) for r in records],
        "",
        "Curves (one schedule per recipe; a middle point is at a still-high lr):",
        "",
        *[curve_line(r) for r in records],
    ]
    if records:
        best = max(records, key=lambda r: r["final"]["psnr"])
        lines += ["", f"Best final PSNR: {best['recipe']} ({best['final']['psnr']:.2f} dB)."]
    lines += ["", "Reconstructions of held-out frames (original | recon):", ""]
    lines += [f"- {r['recipe']}: ![{r['recipe']}]({STEM}/{r['recipe']}_recon.png)" for r in records]
    return "\n".join(lines) + "\n"


# ---- main ----------------------------------------------------------------------------------
def parse_recipes(names: str | None, added: list[str]) -> dict[str, tuple[str, ...]]:
    """``--recipes`` (built-in names, in order; None: all, "": none) plus every
    ``--add-recipe "NAME: k=v ..."``."""
    recipes = dict(RECIPES) if names is None else {}
    for n in filter(None, (names or "").split(",")):
        if n not in RECIPES:
            raise ValueError(f"--recipes: unknown {n!r} (known: {', '.join(RECIPES)})")
        recipes[n] = RECIPES[n]
    for spec in added:
        name, sep, rest = spec.partition(":")
        name, overrides = name.strip(), tuple(shlex.split(rest))
        ok = name.replace("-", "").replace("_", "").replace(".", "").isalnum()
        if not (sep and ok and overrides and all("=" in o for o in overrides)):
            raise ValueError(f"--add-recipe {spec!r}: expected 'NAME: key=value [key=value ...]'")
        recipes[name] = overrides
    if not recipes:
        raise ValueError("--recipes: no recipe to run")
    return recipes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="full")
    ap.add_argument(
        "--budget-min",
        type=float,
        default=0.0,
        help="wall-clock minutes of training per recipe (default: the preset's)",
    )
    ap.add_argument("--data", default=str(CAMVID / "train" / "images"), help="training folder")
    ap.add_argument("--val-data", default=str(CAMVID / "test" / "images"), help="held-out folder")
    ap.add_argument(
        "--recipes",
        default=None,
        help=f"comma-separated, of: {', '.join(RECIPES)} (default: all; '': only --add-recipe)",
    )
    ap.add_argument(
        "--add-recipe",
        action="append",
        default=[],
        metavar="'NAME: k=v ...'",
        help="a recipe of its own overrides on the base (repeatable)",
    )
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--work", default="runs/tokenizer_64px")
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--in-process", action="store_true", help="no subprocesses (tests)")
    return ap.parse_args(argv)


def check_folders(a: argparse.Namespace) -> str:
    """The ``error:`` line when an image folder is missing or empty, else ''."""
    for flag, folder in (("--data", a.data), ("--val-data", a.val_data)):
        path = Path(folder).expanduser()
        if not path.is_dir() or count_images(path) == 0:
            what = "is not a folder" if not path.is_dir() else "holds no images"
            hint = " (unpack ../shared/data/camvid-240x180.tar.gz into ~/.cache/cimpt/data)"
            return f"error: {flag}: {folder} {what}{hint}"
    return ""


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        recipes = parse_recipes(a.recipes, a.add_recipe)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if err := check_folders(a):
        print(err, file=sys.stderr)
        return 2
    evidence.IN_PROCESS = a.in_process
    preset = PRESETS[a.preset]
    data, val = (Path(p).expanduser().resolve() for p in (a.data, a.val_data))
    work, out = Path(a.work).expanduser().resolve(), under_root(a.out)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    s = Study(data, val, work, preset, count_images(data), max(1, a.threads),
              a.budget_min * 60 or preset.budget_s)  # fmt: skip
    calib = calibrate(s, recipes)
    print(f"[tok64] calibration (s/step): {json.dumps({n: calib[n] for n in recipes})}; "
          f"training ~{len(recipes) * s.budget_s / 60:.0f} min", flush=True)  # fmt: skip
    meta = {
        "preset": a.preset, "commit": git_commit(), "budget_s": s.budget_s,
        "threads": s.threads, "cpu_count": os.cpu_count(), "command": " ".join(sys.argv),
        "data": str(data), "val_data": str(val), "n_train": s.n_train,
        "n_val": count_images(val), "base": list(BASE), "preset_extra": list(preset.extra),
    }  # fmt: skip
    t0, records = time.time(), []
    for i, (name, overrides) in enumerate(recipes.items()):
        records.append(study_recipe(s, name, overrides, calib[name], out))
        meta.update(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    study_wallclock_s=round(time.time() - t0, 1),
                    progress=f"{i + 1} of {len(recipes)}")  # fmt: skip
        write_study(out, STEM, {"meta": meta, "recipes": records}, markdown(records, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
