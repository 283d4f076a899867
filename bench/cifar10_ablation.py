"""Why does CIM miss +5 points at 10 % labels? Ablations of the ViT evidence study (issue 4).

Each arm changes one thing of the evidence study's ViT REVDET pre-training (the better
objective there), keeps everything else, and is measured twice:

- ``cimpt knn`` (k = 20 and 200, all 50,000 training labels) on the frozen pre-trained
  encoder: representation quality without fine-tuning noise;
- ``cimpt finetune`` at 10 % labels with exactly the evidence study's recipe and budget of the
  chosen ``--preset`` (``short``: 12 epochs, 468 steps), so each arm compares with that
  preset's scratch and CIM rows.

The reference arms reuse the evidence study's runs in ``--work`` (its tokenizer, its
``pretrain_respix``/``pretrain_revdet`` and 10 % fine-tuning runs); ``scratch_seed1`` repeats
the scratch baseline with another seed (label subset and training), which measures how much
two runs of the same recipe differ. The seed arms (``scratch_seed2``, ``<encoder>_seed1`` and
``_seed2``) fine-tune an existing encoder again with another seed; every gain is paired with
the scratch run of the same seed (same labels), and encoders with several seeds get a mean.
A seed arm needs its encoder's arm finished first: two jobs on one run directory are refused.
Finished jobs are reused; interrupted ones resume.

    python bench/cifar10_ablation.py [--preset short] [--arms a,b] [--parallel 2] \
        [--work runs/evidence] [--out docs/results]

writes ``<out>/cifar10_ablation.json`` (one row per arm, with its configs) and
``<out>/cifar10_ablation.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cifar10_evidence
from cifar10_evidence import (
    CIFAR,
    PRESETS,
    TINY_VIT,
    VIT,
    Backbone,
    Job,
    Preset,
    budget,
    count_images,
    finetune_job,
    pretrain_job,
    run_job,
    tokenizer_job,
)
from records import git_commit, write_study


@dataclass(frozen=True)
class Arm:
    """One ablation: pre-training ``objective`` (None: no pre-training) for
    ``pretrain_epochs`` with ``overrides``; ``reuse`` names the evidence study's own
    pre-training run when the arm is its reference point."""

    name: str
    change: str
    objective: str | None
    pretrain_epochs: float = 0.0
    overrides: tuple[str, ...] = ()
    seed: int = 0
    reuse: bool = False
    tokenizer_epochs: float = 0.0  # > 0: the arm trains its own tokenizer for this long
    pretrain_from: str = ""  # fine-tune (with ``seed``) the encoder of this arm instead


ARMS = [
    Arm("scratch", "none (reference)", None, reuse=True),
    Arm("scratch_seed1", "seed 1 (label subset and training)", None, seed=1),
    Arm("respix", "none (reference)", "respix", reuse=True),
    Arm("revdet", "none (reference)", "revdet", reuse=True),
    Arm("revdet_pt4ep", "pre-training 4 epochs", "revdet", 4.0),
    Arm("revdet_pt0.5ep", "pre-training 0.5 epoch", "revdet", 0.5),
    Arm("revdet_mask0.6", "mask ratio 0.6 (was 0.45)", "revdet", overrides=("mask.ratio=0.6",)),
    Arm("revdet_tok4ep", "tokenizer trained 4 epochs (was 1.5)", "revdet", tokenizer_epochs=4.0),
    Arm(
        "revdet_temp0.5",
        "sampling temperature 0.5 (was 1.0)",
        "revdet",
        overrides=("generator.temperature=0.5",),
    ),
    # Not one change: the two best single changes together.
    Arm(
        "revdet_pt4ep_temp0.5",
        "pre-training 4 epochs and temperature 0.5",
        "revdet",
        4.0,
        overrides=("generator.temperature=0.5",),
    ),
    # Seeds: each pre-trained encoder fine-tuned again with the label subset and training
    # seed of a scratch run, so that gains are paired (same labels, same seed).
    *(
        Arm(f"scratch_seed{s}", f"seed {s} (label subset and training)", None, seed=s)
        for s in (2, 3)
    ),
    *(
        Arm(f"{enc}_seed{s}", f"seed {s}, {enc}'s encoder", "revdet", seed=s, pretrain_from=enc)
        for enc in ("revdet", "revdet_pt4ep")
        for s in (1, 2, 3)
    ),
]
BY_NAME = {arm.name: arm for arm in ARMS}


def arm_tokenizer(a: argparse.Namespace, p: Preset, n_train: int, work: Path, arm: Arm) -> Job:
    """The tokenizer job of ``arm``: the study's, or the arm's own when it changes it."""
    if not arm.tokenizer_epochs:
        return tokenizer_job(a, p, n_train, work)
    home = work / "ablation" / arm.name
    job = tokenizer_job(a, p, n_train, home)
    return Job(
        f"ablation_{arm.name}_tokenizer",
        [*job.argv, *budget(p, arm.tokenizer_epochs, n_train, 128)],
        job.run_dir,
        job.done_file,
    )


def arm_jobs(
    a: argparse.Namespace, p: Preset, n_train: int, work: Path, arm: Arm
) -> tuple[Job | None, Job, Job | None]:
    """(pre-training, 10 % fine-tuning, kNN) jobs of ``arm``; reference arms point at the
    evidence study's runs, the others live under ``<work>/ablation/<arm>``."""
    b: Backbone = TINY_VIT if p.max_steps else VIT  # the evidence study's choice
    if arm.pretrain_from:
        return seeded_jobs(a, p, n_train, work, arm)
    pre = None
    init = "scratch" if arm.objective is None else f"cim-{arm.objective}"
    ft = finetune_job(a, p, n_train, work, b, init, 0.1)
    if arm.reuse:
        pre = None if arm.objective is None else pretrain_job(a, p, n_train, work, b, arm.objective)
    else:
        home = work / "ablation" / arm.name
        ckpt = ""
        if arm.objective is not None:
            pre = pretrain_job(a, p, n_train, work, b, arm.objective)
            pre = Job(
                f"ablation_{arm.name}_pretrain",
                [
                    *pre.argv,
                    f"run.dir={home / 'pretrain'}",
                    *arm.overrides,
                    f"tokenizer.checkpoint={arm_tokenizer(a, p, n_train, work, arm).run_dir}",
                    *budget(p, arm.pretrain_epochs or p.pretrain_epochs, n_train, 128),
                ],
                home / "pretrain",
                pre.done_file,
            )
            ckpt = str(pre.run_dir)
        ft = Job(
            f"ablation_{arm.name}_finetune10pct",
            [
                *ft.argv,
                f"run.dir={home / 'finetune_10pct'}",
                f"init.checkpoint={ckpt}",
                f"seed={arm.seed}",
            ],
            home / "finetune_10pct",
            ft.done_file,
        )
    knn = None
    if arm.objective is not None or arm.name == "scratch":
        ckpt = "" if pre is None else str(pre.run_dir)
        run = work / "ablation" / arm.name / "knn"
        knn = Job(
            f"ablation_{arm.name}_knn",
            [
                "knn",
                "configs/cifar10_finetune.yaml",
                f"run.dir={run}",
                f"init.checkpoint={ckpt}",
                f"data.path={a.data}",
                f"data.val_path={a.val_data}",
                *b.arch,
                "run.progress=false",
                "data.num_workers=1",
                "eval.batch_size=256",
            ],
            run,
            "knn.json",
        )
    return pre, ft, knn


def seeded_jobs(
    a: argparse.Namespace, p: Preset, n_train: int, work: Path, arm: Arm
) -> tuple[Job | None, Job, Job | None]:
    """The pre-training job of ``arm.pretrain_from`` (reused: the same encoder) and a 10 %
    fine-tuning of it with ``arm.seed``; no kNN, which would repeat the source arm's."""
    pre, ft, _ = arm_jobs(a, p, n_train, work, BY_NAME[arm.pretrain_from])
    assert pre is not None, f"{arm.pretrain_from} has no pre-training"
    run = work / "ablation" / arm.name / "finetune_10pct"
    argv = [*ft.argv, f"run.dir={run}", f"init.checkpoint={pre.run_dir}", f"seed={arm.seed}"]
    return pre, Job(f"ablation_{arm.name}_finetune10pct", argv, run, ft.done_file), None


def job_commit(job: Job) -> str | None:
    """The commit that ran ``job`` (None for runs made before jobs recorded it)."""
    info = job.run_dir / "evidence_job.json"
    return json.loads(info.read_text()).get("commit") if info.exists() else None


def last_pretrain_metrics(run_dir: Path) -> dict[str, float]:
    """The generator's token accuracy on masked positions and the share of masked tokens it
    replaced, at the last logged step: how plausible the corruption was (docs/METHOD.md)."""
    last: dict[str, Any] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "gen_acc" in rec:
            last = rec
    return {k: round(float(last[k]), 4) for k in ("gen_acc", "replaced_masked") if k in last}


def run_arm(
    a: argparse.Namespace, p: Preset, n_train: int, work: Path, arm: Arm, threads: int
) -> dict[str, Any]:
    """Run (or reuse) the arm's jobs in order and return its row."""
    log_dir = work / "logs"
    tok = arm_tokenizer(a, p, n_train, work, arm)
    run_job(tok, threads, log_dir, a.report_only)
    pre, ft, knn = arm_jobs(a, p, n_train, work, arm)
    if pre is not None:
        run_job(pre, threads, log_dir, a.report_only)
    knn_res = None
    if knn is not None:
        run_job(knn, threads, log_dir, a.report_only)
        if (knn.run_dir / knn.done_file).exists():
            knn_res = json.loads((knn.run_dir / knn.done_file).read_text())["top1"]
    run_job(ft, threads, log_dir, a.report_only)
    row: dict[str, Any] = {
        "arm": arm.name,
        "change": arm.change,
        "objective": arm.objective,
        "seed": arm.seed,
        "pretrain_from": arm.pretrain_from or None,
        "knn_top1": knn_res,
        "top1": None,
    }
    if arm.objective is not None and (tok.run_dir / "tokenizer_eval.json").exists():
        row["tokenizer_psnr"] = json.loads((tok.run_dir / "tokenizer_eval.json").read_text())[
            "psnr"
        ]
    if (ft.run_dir / ft.done_file).exists():
        res = json.loads((ft.run_dir / ft.done_file).read_text())
        row |= {
            "top1": res["last"]["top1"],
            "best_top1": res["best"]["top1"],
            "finetune_wallclock_s": round(ft.wallclock_s, 1),
            "finetune_commit": job_commit(ft),
            "finetune_config": yaml.safe_load((ft.run_dir / "config.yaml").read_text()),
        }
    if pre is not None and (pre.run_dir / pre.done_file).exists():  # finished runs only
        pcfg = yaml.safe_load((pre.run_dir / "config.yaml").read_text())
        row |= {
            "generator": last_pretrain_metrics(pre.run_dir),
            "pretrain_steps": pcfg["train"]["max_steps"],
            "pretrain_epochs": round(pcfg["train"]["max_steps"] * 128 / n_train, 2),
            "pretrain_wallclock_s": round(pre.wallclock_s, 1),
            "pretrain_commit": job_commit(pre),
            "pretrain_config": pcfg,
        }
    return row


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"CIFAR-10 (JPEG copy), ViT e128-d6-h4, preset {meta['preset']}, commit "
        f"{meta['commit'][:7]}, {meta['date']}",
        "",
        "| arm | change | tokenizer PSNR | pre-training epochs | generator acc. "
        "| masked replaced "
        "| kNN k=20 | kNN k=200 | fine-tune 10 % top-1 | vs scratch, same seed "
        "| pre-train wall |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    scratch = scratch_by_seed(rows)

    def num(v: float | None, fmt: str = ".2f") -> str:
        return "" if v is None else format(v, fmt)

    for r in rows:
        knn = r["knn_top1"] or {}
        gain = paired_gain(r, scratch)
        wall = r.get("pretrain_wallclock_s")
        gen = r.get("generator", {})
        lines.append(
            f"| {r['arm']} | {r['change']} | {num(r.get('tokenizer_psnr'), '.1f')} | "
            f"{num(r.get('pretrain_epochs'), '.1f')} | "
            f"{num(gen.get('gen_acc'), '.1%')} | {num(gen.get('replaced_masked'), '.1%')} | "
            f"{num(knn.get('20'))} | {num(knn.get('200'))} | {num(r['top1'])} | "
            f"{num(gain, '+.2f')} | {'' if wall is None else f'{wall / 60:.0f} min'} |"
        )
    return "\n".join([*lines, *seed_summary(rows, scratch)]) + "\n"


def scratch_by_seed(rows: list[dict[str, Any]]) -> dict[int, float]:
    """Top-1 of the scratch rows, by seed (each seed has its own label subset)."""
    return {r["seed"]: r["top1"] for r in rows if r["objective"] is None and r["top1"] is not None}


def paired_gain(row: dict[str, Any], scratch: dict[int, float]) -> float | None:
    """``row``'s top-1 minus scratch's with the same seed: same labels, same training noise
    source. For a scratch row other than seed 0: its difference from seed 0, the spread."""
    if row["top1"] is None:
        return None
    if row["objective"] is None:
        return None if row["seed"] == 0 or 0 not in scratch else row["top1"] - scratch[0]
    ref = scratch.get(row["seed"])
    return None if ref is None else row["top1"] - ref


def seed_summary(rows: list[dict[str, Any]], scratch: dict[int, float]) -> list[str]:
    """Mean and range of the paired gains of each encoder fine-tuned with several seeds."""
    gains: dict[str, list[float]] = {}
    for r in rows:
        gain = paired_gain(r, scratch)
        if r["objective"] is not None and gain is not None:
            gains.setdefault(r["pretrain_from"] or r["arm"], []).append(gain)
    out = []
    for enc, g in gains.items():
        if len(g) > 1:
            out.append(
                f"- {enc}: paired gain over {len(g)} seeds, mean {sum(g) / len(g):+.2f} "
                f"(from {min(g):+.2f} to {max(g):+.2f})"
            )
    return ["", *out] if out else []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="short")
    ap.add_argument("--arms", default=",".join(arm.name for arm in ARMS))
    ap.add_argument("--data", default=str(CIFAR / "train"))
    ap.add_argument("--val-data", default=str(CIFAR / "test"))
    ap.add_argument("--work", default="runs/evidence")
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--parallel", type=int, default=2, help="arms at a time (threads split)")
    ap.add_argument("--in-process", action="store_true", help="no subprocesses (tests)")
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="threads per job (default: the CPU count split over --parallel)",
    )
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: write the table from the jobs that have finished",
    )
    a = ap.parse_args(argv)
    cifar10_evidence.IN_PROCESS = a.in_process
    a.parallel = 1 if a.in_process else a.parallel  # trainings never share one process
    chosen = a.arms.split(",")
    unknown = [n for n in chosen if n not in BY_NAME]
    if unknown:
        print(
            f"error: --arms: unknown {', '.join(unknown)} (known: {', '.join(BY_NAME)})",
            file=sys.stderr,
        )
        return 2
    p = PRESETS[a.preset]
    work = Path(a.work).expanduser().resolve()
    if not (work / "tokenizer" / "tokenizer.safetensors").exists():
        print(
            f"error: --work: {work} has no tokenizer; run bench/cifar10_evidence.py "
            f"--preset {a.preset} --backbones vit first",
            file=sys.stderr,
        )
        return 2
    (work / "logs").mkdir(parents=True, exist_ok=True)
    n_train = count_images(Path(a.data).expanduser())
    threads = a.threads or max(1, (os.cpu_count() or 2) // a.parallel)
    with ThreadPoolExecutor(a.parallel) as pool:
        rows = list(pool.map(lambda n: run_arm(a, p, n_train, work, BY_NAME[n], threads), chosen))
    meta = {
        "preset": a.preset,
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "parallel": a.parallel,
        "cpu_count": os.cpu_count(),
        "command": " ".join(sys.argv),
    }
    write_study(a.out, "cifar10_ablation", {"meta": meta, "rows": rows}, markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
