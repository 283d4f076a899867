"""Does CIM pre-training help? The small-scale evidence table on CIFAR-10 (issue 4).

Runs, with the user-facing ``cimpt`` commands and nothing else:

1. ``cimpt tokenizer train`` (VQ-VAE, 4x downsampling, 8x8 grid at 32 px);
2. ``cimpt pretrain`` with RESPIX and with REVDET, the same budget each;
3. ``cimpt finetune`` at each label fraction (10 % and 100 %) from each CIM enhancer and from
   scratch, with the identical fine-tuning recipe and budget;

and writes one row per fine-tuning run to ``<out>/cifar10_evidence.json`` (``backbone``,
``init``, ``label_fraction``, ``top1``, ``wallclock_s``, the config used, ...) and a markdown
table to ``<out>/cifar10_evidence.md``. Jobs already finished in ``--work`` are reused and an
interrupted job resumes (``resume=auto``), so rerunning the command continues the study.

Presets (``--preset``), with wall times on this project's 2-core CPU (``--parallel 2``):

- ``standard`` (default): ``short`` for the ViT and ``mini`` for the ResNet, the study in
  docs/BENCHMARKS.md: measured 2.5 h for both backbones (14:34 to 17:05 UTC, all jobs of both
  sharing the 2 cores). ``--report-only`` on that study's work folder rebuilds its table.
- ``full``: tokenizer 3 epochs, pre-training 3 epochs per objective, fine-tuning 2
  epochs at 100 % labels and 20 epochs at 10 %. Estimated from the step costs measured in the
  ``short``/``mini`` runs (ViT: 2.3 s per pre-training step, 2.9 s per fine-tuning step with
  its evaluations; ResNet-10t: 3.7 s and 2.6-3.0 s; one thread per job): about 2.6 h for the
  ViT and 3 h for the ResNet. It has not been run end to end on this machine.
- ``short``: tokenizer 1.5 epochs, pre-training 1.6 epochs, fine-tuning 2 epochs (100 %) and
  12 epochs (10 %); measured 1.6 h for the ViT (docs/BENCHMARKS.md).
- ``mini``: pre-training 0.5 epoch, fine-tuning 1 epoch (100 %) and 5 epochs (10 %); measured
  55 min for the ResNet (the tokenizer, 3 min, is shared by both backbones). Its one epoch at
  100 % labels is all warm-up (the recipe warms up for 1 epoch), so those rows compare models
  at the peak lr; docs/BENCHMARKS.md shows the ResNet rerun with 2 epochs.
- ``quick``: a tiny model and a few steps per job on a tiny subset, minutes; for CI and smoke
  tests (its numbers mean nothing).

Models (``full``/``short``), one set of six rows each (``--backbones vit,resnet``):

- ViT: timm ``vit_tiny_patch16_224`` built with embed 128, depth 6, 4 heads, patch 4 at
  32 px (1.2 M parameters);
- ResNet: timm ``resnet10t`` (4.9 M) on the images upsampled to 64 px, its stride-8 stage
  on the 8x8 token grid, FPN neck of width 128 (``configs/cifar10_resnet.yaml``);

generator BEiT depth 2, width 128; one tokenizer (1,024 codes) for both. Fine-tuning recipe
for every row: ``configs/cifar10_finetune.yaml`` (mixup 0.8, cutmix 1.0, label smoothing
0.1, RandAugment m9, drop path 0.1, AdamW, warm-up + cosine) with
``finetune.layer_decay=1.0``: layer-wise lr decay is meant for pre-trained weights, and
applied to the scratch baseline it would slow its lower layers and widen the gap
in CIM's favour, so it is off for every row.

    python bench/cifar10_evidence.py [--preset standard|full|short|mini|quick] [--parallel 2] \
        [--backbones vit,resnet] [--data DIR --val-data DIR] [--work runs/evidence] \
        [--out docs/results]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from records import ROOT, git_commit, under_root

CIFAR = Path("~/.cache/cimpt/data/CIFAR-10-images").expanduser()
INITS = ("scratch", "cim-respix", "cim-revdet")


@dataclass(frozen=True)
class Backbone:
    """One enhancer architecture of the study: its pre-training config and the overrides
    that pin the architecture in every job (pre-training and fine-tuning alike)."""

    key: str
    label: str
    config: str
    arch: tuple[str, ...]
    run_prefix: str  # "" for the ViT, whose run names predate the ResNet rows


VIT = Backbone(
    "vit",
    "ViT e128-d6-h4, patch 4 @32px (1.2 M)",
    "configs/cifar10_vit.yaml",
    (
        "enhancer.name=vit_tiny_patch16_224",
        "enhancer.patch_size=4",
        "data.img_size=32",
        "enhancer.kwargs={embed_dim: 128, depth: 6, num_heads: 4}",
    ),
    "",
)
RESNET = Backbone(
    "resnet",
    "ResNet-10t @64px, grid stride 8 (4.9 M)",
    "configs/cifar10_resnet.yaml",
    (
        "enhancer.name=resnet10t",
        "enhancer.patch_size=8",
        "data.img_size=64",
        "enhancer.kwargs={}",
        "enhancer.neck_dim=128",
    ),
    "resnet_",
)
TINY_VIT = Backbone(
    "vit",
    "tiny ViT (quick)",
    VIT.config,
    (*VIT.arch[:3], "enhancer.kwargs={embed_dim: 32, depth: 1, num_heads: 2}"),
    "",
)
BACKBONES = {"vit": VIT, "resnet": RESNET}


@dataclass
class Preset:
    """Budgets of one preset; ``*_epochs`` or, when ``max_steps`` is set, steps per job."""

    tokenizer_epochs: float
    pretrain_epochs: float
    ft_epochs: dict[float, int]
    eval_every: dict[float, int]
    max_steps: int = 0
    extra: list[str] = field(default_factory=list)


PRESETS = {
    "full": Preset(3, 3, {1.0: 2, 0.1: 20}, {1.0: 1, 0.1: 5}),
    "short": Preset(1.5, 1.6, {1.0: 2, 0.1: 12}, {1.0: 1, 0.1: 4}),
    "mini": Preset(1.5, 0.5, {1.0: 1, 0.1: 5}, {1.0: 1, 0.1: 5}),
    "quick": Preset(
        1,
        1,
        {1.0: 1, 0.1: 1},
        {1.0: 1, 0.1: 1},
        max_steps=3,
        extra=[
            "train.batch_size=8",
            "generator.depth=1",
            "generator.embed_dim=32",
            "generator.num_heads=2",
            "tokenizer.vocab_size=16",
            "tokenizer.width=8",
            "tokenizer.res_blocks=1",
            "tokenizer.embed_dim=8",
        ],
    ),
}
# Presets that give each backbone its own budget: ``standard`` is the measured study.
BACKBONE_PRESETS = {"standard": {"vit": "short", "resnet": "mini"}}


def preset_for(name: str, backbone: str) -> tuple[str, Preset]:
    """The concrete preset (name, budgets) that ``--preset name`` gives ``backbone``."""
    concrete = BACKBONE_PRESETS.get(name, {}).get(backbone, name)
    return concrete, PRESETS[concrete]


@dataclass
class Job:
    name: str
    argv: list[str]
    run_dir: Path
    done_file: str
    wallclock_s: float = 0.0
    reused: bool = False
    missing: bool = False  # --report-only: the job has not finished


def count_images(root: Path) -> int:
    from cimpt.data.folder import scan_images

    return len(scan_images(root))


def budget(preset: Preset, epochs: float, n_images: int, batch: int) -> list[str]:
    """``train.max_steps`` for ``epochs`` passes over ``n_images`` (fractions allowed)."""
    steps = preset.max_steps or max(1, round(epochs * (n_images // batch)))
    return [f"train.max_steps={steps}"]


#: Run jobs in this process, not as subprocesses (``--in-process``: the quick presets in
#: the test suite, without a 5-10 s import per job; their numbers mean nothing anyway).
IN_PROCESS = False

_DIR_LOCKS: dict[Path, threading.Lock] = {}
_DIR_LOCKS_GUARD = threading.Lock()


def run_job(job: Job, threads: int, log_dir: Path, report_only: bool = False) -> Job:
    """Run one ``cimpt`` command (resuming a partial run) unless its output exists.

    Jobs of parallel threads that share a run directory (an ablation arm and a seed arm of
    the same encoder) run one at a time: the second waits, then reuses the first's output.
    """
    with _DIR_LOCKS_GUARD:
        lock = _DIR_LOCKS.setdefault(job.run_dir.resolve(), threading.Lock())
    with lock:
        return _run_job(job, threads, log_dir, report_only)


def _run_job(job: Job, threads: int, log_dir: Path, report_only: bool) -> Job:
    timing = job.run_dir / "evidence_job.json"
    if (job.run_dir / job.done_file).exists():
        job.reused = True
        if timing.exists():  # the wall time of the run that made it
            job.wallclock_s = float(json.loads(timing.read_text())["wallclock_s"])
        print(f"[evidence] {job.name}: reusing {job.run_dir}", flush=True)
        return job
    if report_only:
        job.missing = True
        print(f"[evidence] {job.name}: not finished, left out (--report-only)", flush=True)
        return job
    log = log_dir / f"{job.name}.log"
    print(f"[evidence] {job.name}: started ({log})", flush=True)
    commit, t0 = git_commit(), time.time()  # the commit that runs it
    code = _execute(job, threads, log)
    job.wallclock_s = time.time() - t0
    if code != 0:
        raise SystemExit(f"error: evidence job {job.name} failed (exit {code}); see {log}")
    # Reused runs may predate the table's commit: each job keeps its own.
    info = {"wallclock_s": job.wallclock_s, "threads": threads, "commit": commit}
    timing.write_text(json.dumps(info))
    print(f"[evidence] {job.name}: done in {job.wallclock_s / 60:.1f} min", flush=True)
    return job


def _execute(job: Job, threads: int, log: Path) -> int:
    """Run ``cimpt <job.argv> resume=auto`` with its output in ``log``; its exit code."""
    with open(log, "a") as f:
        if IN_PROCESS:
            from cimpt.cli import main as cimpt_main

            with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
                try:  # no DataLoader worker processes inside the caller's process
                    return cimpt_main([*job.argv, "data.num_workers=0", "resume=auto"])
                except SystemExit as exc:  # argparse
                    return int(exc.code or 0)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        return subprocess.run(
            [sys.executable, "-m", "cimpt.cli", *job.argv, "resume=auto"],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        ).returncode


def tokenizer_job(a: argparse.Namespace, p: Preset, n_train: int, work: Path) -> Job:
    run = work / "tokenizer"
    argv = [
        "tokenizer",
        "train",
        "configs/cifar10_tokenizer.yaml",
        f"run.dir={run}",
        f"data.path={a.data}",
        f"data.val_path={a.val_data}",
        "run.progress=false",
        "data.num_workers=1",
        *p.extra,
        *budget(p, p.tokenizer_epochs, n_train, 128),
    ]
    return Job("tokenizer", argv, run, "tokenizer.safetensors")


def pretrain_job(
    a: argparse.Namespace, p: Preset, n_train: int, work: Path, b: Backbone, objective: str
) -> Job:
    run = work / f"{b.run_prefix}pretrain_{objective}"
    argv = [
        "pretrain",
        b.config,
        f"run.dir={run}",
        f"objective={objective}",
        f"data.path={a.data}",
        f"tokenizer.checkpoint={work / 'tokenizer'}",
        *b.arch,
        "run.progress=false",
        "data.num_workers=1",
        "run.ckpt_every=200",
        "run.vis_every=200",
        "train.warmup_epochs=0.25",
        *p.extra,
        *budget(p, p.pretrain_epochs, n_train, 128),
    ]
    return Job(run.name, argv, run, "enhancer.safetensors")


def finetune_job(
    a: argparse.Namespace,
    p: Preset,
    n_train: int,
    work: Path,
    b: Backbone,
    init: str,
    fraction: float,
) -> Job:
    run = work / f"{b.run_prefix}finetune_{init}_{round(fraction * 100)}pct"
    ckpt = "" if init == "scratch" else str(work / f"{b.run_prefix}pretrain_{init.split('-')[1]}")
    n_labelled = round(n_train * fraction)
    # quick: batches small enough for a tiny labelled subset (even, for mixup's pairs)
    batch = max(2, min(8, n_labelled // 2 * 2)) if p.max_steps else 128
    argv = [
        "finetune",
        "configs/cifar10_finetune.yaml",
        f"run.dir={run}",
        f"init.checkpoint={ckpt}",
        f"data.path={a.data}",
        f"data.val_path={a.val_data}",
        f"data.label_fraction={fraction}",
        *b.arch,
        "finetune.layer_decay=1.0",
        f"eval.every_epochs={p.eval_every[fraction]}",
        "run.progress=false",
        "data.num_workers=1",
        "run.ckpt_every=500",
        f"train.batch_size={batch}",
        "train.warmup_epochs=1.0",
        *budget(p, p.ft_epochs[fraction], n_labelled, batch),
    ]
    return Job(run.name, argv, run, "results.json")


def make_row(
    job: Job, init: str, fraction: float, b: Backbone, pretrain: Job | None, preset: str
) -> dict[str, Any]:
    res = json.loads((job.run_dir / "results.json").read_text())
    cfg = yaml.safe_load((job.run_dir / "config.yaml").read_text())
    row: dict[str, Any] = {
        "backbone": b.label,
        "init": init,
        "preset": preset,
        "label_fraction": fraction,
        "top1": res["last"]["top1"],
        "top5": res["last"]["top5"],
        "best_top1": res["best"]["top1"],
        "train_images": res["train_images"],
        "wallclock_s": round(job.wallclock_s, 1),
        "steps": cfg["train"]["max_steps"],
        "reused": job.reused,
        "config": cfg,
    }
    if pretrain is not None:
        pcfg = yaml.safe_load((pretrain.run_dir / "config.yaml").read_text())
        row["pretrain"] = {
            "objective": pcfg["objective"],
            "steps": pcfg["train"]["max_steps"],
            "wallclock_s": round(pretrain.wallclock_s, 1),
            "config": pcfg,
        }
    return row


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    head = (
        "| backbone | preset | init | labels | top-1 (last) | best top-1 | top-5 "
        "| fine-tune steps | fine-tune wall | gain vs scratch |"
    )
    lines = [
        f"CIFAR-10 (JPEG copy), commit {meta['commit'][:7]}, {meta['date']}",
        "",
        head,
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    scratch = {
        (r["backbone"], r["label_fraction"]): r["top1"] for r in rows if r["init"] == "scratch"
    }
    for r in rows:
        gain = r["top1"] - scratch.get((r["backbone"], r["label_fraction"]), float("nan"))
        lines.append(
            f"| {r['backbone']} | {r.get('preset', '')} | {r['init']} | "
            f"{r['label_fraction']:.0%} | {r['top1']:.2f} | {r['best_top1']:.2f} | "
            f"{r['top5']:.2f} | {r['steps']} | {r['wallclock_s'] / 60:.1f} min | "
            f"{'' if r['init'] == 'scratch' else f'{gain:+.2f}'} |"
        )
    return "\n".join(lines) + "\n"


def merge_rows(path: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of ``path`` for backbones not in ``rows`` (kept, e.g. from another preset's run),
    then ``rows``: one file collects the table of every backbone."""
    if not path.exists():
        return rows
    now = {r["backbone"] for r in rows}
    return [r for r in json.loads(path.read_text()) if r["backbone"] not in now] + rows


def run_study(a: argparse.Namespace) -> list[dict[str, Any]]:
    keys = a.backbones.split(",")
    p = preset_for(a.preset, keys[0])[1]  # the tokenizer's budget (the same in every preset)
    work = Path(a.work).expanduser().resolve()
    log_dir = work / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    n_train = count_images(Path(a.data).expanduser())
    threads = max(1, (os.cpu_count() or 2) // a.parallel)
    run_job(tokenizer_job(a, p, n_train, work), threads * a.parallel, log_dir, a.report_only)
    rows = []
    for key in keys:
        name, p = preset_for(a.preset, key)
        b = TINY_VIT if (p.max_steps and key == "vit") else BACKBONES[key]
        with ThreadPoolExecutor(a.parallel) as pool:
            pre = dict(
                zip(
                    ("respix", "revdet"),
                    pool.map(
                        lambda o, b=b, p=p: run_job(
                            pretrain_job(a, p, n_train, work, b, o), threads, log_dir, a.report_only
                        ),
                        ("respix", "revdet"),
                    ),
                    strict=True,
                )
            )
            plan = [(i, f) for f in (0.1, 1.0) for i in INITS]
            jobs = list(
                pool.map(
                    lambda jf, b=b, p=p: run_job(
                        finetune_job(a, p, n_train, work, b, jf[0], jf[1]),
                        threads,
                        log_dir,
                        a.report_only,
                    ),
                    plan,
                )
            )
        rows += [
            make_row(job, init, f, b, pre.get(init.split("-")[-1]), name)
            for job, (init, f) in zip(jobs, plan, strict=True)
            if not job.missing
        ]
    return rows


def cifar_folders_exist(a: argparse.Namespace) -> bool:
    """``--data`` and ``--val-data`` are folders; else one ``error:`` line on stderr."""
    for key in ("data", "val_data"):
        if not Path(getattr(a, key)).expanduser().is_dir():
            print(
                f"error: --{key.replace('_', '-')}: {getattr(a, key)} is not a folder "
                "(unpack ../shared/data/CIFAR-10-images.tar.gz, see docs/BENCHMARKS.md)",
                file=sys.stderr,
            )
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted([*PRESETS, *BACKBONE_PRESETS]), default="standard")
    ap.add_argument("--data", default=str(CIFAR / "train"))
    ap.add_argument("--val-data", default=str(CIFAR / "test"))
    ap.add_argument("--work", default="runs/evidence")
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--parallel", type=int, default=2, help="jobs at a time (threads split)")
    ap.add_argument("--in-process", action="store_true", help="no subprocesses (tests)")
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: write the table from the jobs that have finished",
    )
    ap.add_argument(
        "--backbones",
        default="vit,resnet",
        help="comma-separated: vit, resnet (each gets all six rows)",
    )
    a = ap.parse_args(argv)
    unknown = set(a.backbones.split(",")) - set(BACKBONES)
    if unknown:
        print(
            f"error: --backbones: unknown {', '.join(sorted(unknown))} (use vit, resnet)",
            file=sys.stderr,
        )
        return 2
    if not cifar_folders_exist(a):
        return 2
    global IN_PROCESS
    IN_PROCESS = a.in_process
    a.parallel = 1 if a.in_process else a.parallel  # trainings never share one process
    t0 = time.time()
    rows = run_study(a)
    meta = {
        "preset": a.preset,
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "total_wallclock_s": round(time.time() - t0, 1),
        "parallel": a.parallel,
        "cpu_count": os.cpu_count(),
        "command": " ".join(sys.argv),
    }
    out = under_root(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = merge_rows(out / "cifar10_evidence.json", rows)
    (out / "cifar10_evidence.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / f"cifar10_evidence_meta_{a.backbones.replace(',', '_')}.json").write_text(
        json.dumps(meta, indent=2) + "\n"
    )
    table = markdown(rows, meta)
    (out / "cifar10_evidence.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
