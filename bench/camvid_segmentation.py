"""Does CIM pre-training help dense prediction? CamVid segmentation from CIFAR-10 encoders
(issue 12).

With the user-facing ``cimpt`` commands and nothing else, for the CIFAR-scale ViT and
ResNet-10t of bench/cifar10_evidence.py, fine-tunes ``cimpt segment`` (UperNet,
configs/camvid_segment.yaml) with one identical recipe and budget

- from scratch,
- from the CIM-RESPIX and the CIM-REVDET encoder of the CIFAR-10 evidence study (its
  ``--work`` folder, ``--evidence-work``; missing encoders are produced there with that
  script's own tokenizer and pre-training jobs, ``--evidence-preset``),
- from any other encoder named with ``--encoder BACKBONE:NAME=PATH`` (a pre-training run,
  checkpoint or exported ``enhancer.safetensors`` of the same architecture, e.g. a MAE,
  SimMIM or BEiT run later: ``--encoder vit:mae=runs/mae_vit``),
- or, with ``--backbones vit192``, the encoders of the method comparison
  (bench/compare_methods.py, ViT e192-d6-h3): scratch plus the ``--encoder vit192:NAME=PATH``
  ones, e.g. ``--encoder vit192:cim-revdet=runs/methods/cim-revdet/pretrain
  --encoder vit192:mae=runs/methods/mae/pretrain``,

for each ``--seeds`` seed, trains on ``camvid/train`` and evaluates once, at the end, on
``camvid/test`` (233 frames; no model selection, so the test split is seen once). The ViT is
pre-trained at 32 px (8x8 grid) and segments 64 px crops (16x16 grid): ``cimpt segment``
resamples its position embeddings (timm ``resample_abs_pos_embed``, bicubic). Layer-wise lr
decay is off for every row by default (``segment.layer_decay=1.0``), as in the CIFAR evidence
table: applied to the scratch baseline it would slow its lower layers and widen the gap in
CIM's favour. ``--layer-decay 0.65`` (BEiT's segmentation value) runs every row, scratch
included, with it instead, in run folders ending ``_ld0.65``, so both recipes can sit
in one ``--work`` and each init can be read at its better one; ``--blr`` likewise sets every
row's base learning rate (``train.blr``, folders ending ``_blr<value>``; the config's 1e-2 by
default). ``--steps`` sets every row's fine-tuning budget (``train.max_steps``, folders ending
``_steps<N>``; the preset's without it), to see whether a gain over scratch grows or shrinks
with a longer fine-tuning. ``--amp`` sets every row's ``train.amp``: ``none`` (fp32 on every
machine, the default since 2026-12-07; tables made before then ran the config's ``auto``,
which is bf16 autocast on CPUs with AMX or AVX512-BF16 and fp32 elsewhere), ``bf16`` or
``auto`` (folders ending ``_amp<value>``); each row records what its run computed in, from the run's
``environment.jsonl``.

Writes ``<out>/camvid_segmentation.json`` (one row per run: backbone, init, seed, mIoU, pixel
accuracy, per-class IoU, steps, wall time, the config, the encoder's pre-training summary)
and ``<out>/camvid_segmentation.md``. Jobs already finished in ``--work`` are reused and an
interrupted one resumes (``resume=auto``), so rerunning the command continues the study.

Presets:

- ``standard`` (default): 450 steps of batch 8 (9.8 epochs of the 367 training frames, one of
  them warm-up) per run, 64 px crops of the frames at half resolution (120x90), 2 backbones x
  3 inits x 1 seed = 6 runs, 2 at a time with 1 thread each. Estimated at about 1 h (58 min)
  on this project's 2-core CPU from a timed 30-step run of each backbone side by side, with
  other users' jobs running (load about 3): 3.6 s per ViT step, 1.2 s per ResNet step, about
  1 min for the final evaluation on the 233 test frames and 15 s of start-up per run
  (docs/BENCHMARKS.md, "CamVid segmentation"). Not counted: the CIM encoders, reused from the
  evidence study (roughly 40 min more when they must be made). It has not been run end to end.
- ``quick``: a tiny model, 2 steps per run, on whatever ``--camvid`` folder is given; run in
  this process (``--in-process``) by the test suite in seconds. Its numbers mean nothing.

    python bench/camvid_segmentation.py [--preset standard|quick] [--camvid DIR] \
        [--backbones vit,resnet] [--seeds 0,1] [--encoder vit:mae=runs/mae_vit ...] \
        [--evidence-work runs/evidence] [--work runs/camvid_seg] [--out docs/results]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from cimpt.config import load_config, typed
from cimpt.engine.environment import run_precision
from cimpt.errors import ConfigError

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cifar10_evidence as evidence
import compare_methods
from records import git_commit, write_study

CAMVID = Path("~/.cache/cimpt/data/camvid").expanduser()
CONFIG = "configs/camvid_segment.yaml"
CIM_INITS = {"cim-respix": "respix", "cim-revdet": "revdet"}


@dataclass
class SegPreset:
    """Budget and size of every segmentation run of a preset."""

    steps: int
    batch: int
    evidence: str  # the evidence preset that makes missing encoders
    extra: list[str] = field(default_factory=list)


PRESETS = {
    "standard": SegPreset(450, 8, "standard"),
    "quick": SegPreset(
        2,
        4,
        "quick",
        ["data.img_size=32", "segment.short_side=0", "segment.decoder_dim=8", "eval.batch_size=8"],
    ),
}


def seg_arch(b: evidence.Backbone) -> list[str]:
    """The backbone's architecture overrides without its pre-training image size (the crop
    size of segmentation is ``data.img_size``; a ViT is resized to it)."""
    return [a for a in b.arch if not a.startswith("data.img_size=")]


# The encoder of the method comparison (bench/compare_methods.py, ViT e192-d6-h3): its MAE,
# SimMIM, BEiT and CIM runs segment with ``--backbones vit192 --encoder
# vit192:mae=runs/methods/mae/pretrain ...``. The evidence study has no encoders of this size,
# so its CIM rows come from ``--encoder`` only (a missing one is left out, not made).
VIT192 = evidence.Backbone(
    "vit192",
    "ViT e192-d6-h3, patch 4 @32px (method comparison)",
    evidence.VIT.config,
    compare_methods.PRESETS["full"].arch,
    "",
)
BACKBONES = {**evidence.BACKBONES, "vit192": VIT192}


def backbone_for(key: str, quick: bool) -> evidence.Backbone:
    return evidence.TINY_VIT if (quick and key.startswith("vit")) else BACKBONES[key]


def make_encoders(a: argparse.Namespace, key: str, log_dir: Path) -> dict[str, evidence.Job]:
    """The backbone's CIM encoders from the evidence study's folder, made there if missing."""
    work = Path(a.evidence_work).expanduser().resolve()
    name, p = evidence.preset_for(PRESETS[a.preset].evidence, key)
    b = backbone_for(key, bool(p.max_steps))
    ev = argparse.Namespace(data=a.cifar, val_data=a.cifar_val or a.cifar)
    n_train = evidence.count_images(Path(a.cifar).expanduser()) if Path(a.cifar).exists() else 0
    pre = [evidence.pretrain_job(ev, p, n_train, work, b, o) for o in ("respix", "revdet")]
    if not all((j.run_dir / j.done_file).exists() for j in pre):
        if not n_train:
            raise SystemExit(f"error: --cifar {a.cifar}: no CIFAR images to pre-train on")
        print(f"[camvid] {key}: making the CIM encoders in {work} ({name} preset)", flush=True)
        run(a, evidence.tokenizer_job(ev, p, n_train, work), log_dir, threads=os.cpu_count() or 1)
    with ThreadPoolExecutor(1 if a.in_process else a.parallel) as pool:
        done = list(pool.map(lambda j: run(a, j, log_dir), pre))
    return {"cim-respix": done[0], "cim-revdet": done[1]}


def run(a: argparse.Namespace, job: evidence.Job, log_dir: Path, threads: int = 0) -> evidence.Job:
    evidence.IN_PROCESS = a.in_process
    threads = threads or max(1, (os.cpu_count() or 2) // a.parallel)
    return evidence.run_job(job, threads, log_dir, a.report_only)


class RecipeFlag(NamedTuple):
    """One recipe flag given to every row: its value, the config override it becomes and the
    run-folder suffix that keeps its runs apart (empty at the default, so those runs keep the
    earlier tables' folders)."""

    flag: str
    value: float
    override: str
    suffix: str


def recipe(a: argparse.Namespace) -> list[RecipeFlag]:
    """The recipe flags of ``a``: ``--layer-decay`` always, ``--steps`` (the fine-tuning budget;
    the preset's without it) always, ``--blr`` when given."""
    ld = a.layer_decay
    steps = PRESETS[a.preset].steps if a.steps is None else a.steps
    out = [RecipeFlag("--layer-decay", ld, f"segment.layer_decay={ld:g}",
                      "" if ld == 1.0 else f"_ld{ld:g}"),
           RecipeFlag("--steps", steps, f"train.max_steps={steps}",
                      "" if a.steps is None else f"_steps{steps}")]  # fmt: skip
    if a.blr is not None:
        out.append(RecipeFlag("--blr", a.blr, f"train.blr={a.blr:g}", f"_blr{a.blr:g}"))
    return out


def seg_job(
    a: argparse.Namespace, key: str, init: str, encoder: str, seed: int, work: Path
) -> evidence.Job:
    p = PRESETS[a.preset]
    b = backbone_for(key, a.preset == "quick")
    camvid = Path(a.camvid).expanduser()
    flags = recipe(a)
    amp = "" if a.amp == "none" else f"_amp{a.amp}"
    run_dir = work / f"{key}_{init}_seed{seed}{''.join(f.suffix for f in flags)}{amp}"
    argv = [
        "segment",
        CONFIG,
        f"run.dir={run_dir}",
        f"init.checkpoint={encoder}",
        f"data.path={camvid / 'train'}",
        f"data.val_path={camvid / 'test'}",
        *seg_arch(b),
        f"seed={seed}",
        *(f.override for f in flags),
        f"train.amp={a.amp}",
        f"train.batch_size={p.batch}",
        "eval.every_epochs=100000",  # once, after the last step
        "run.progress=false",
        "run.ckpt_every=200",
        *p.extra,
    ]
    return evidence.Job(run_dir.name, argv, run_dir, "results.json")


def make_row(
    job: evidence.Job, label: str, init: str, seed: int, pre: evidence.Job | None
) -> dict[str, Any]:
    res = json.loads((job.run_dir / "results.json").read_text())
    cfg = yaml.safe_load((job.run_dir / "config.yaml").read_text())
    last = res["last"]
    row: dict[str, Any] = {
        "backbone": label,
        "init": init,
        "seed": seed,
        "miou": last["miou"],
        "pixel_acc": last["pixel_acc"],
        "per_class_iou": last["per_class_iou"],
        "steps": cfg["train"]["max_steps"],
        "batch": cfg["train"]["batch_size"],
        "crop": cfg["data"]["img_size"],
        "test_images": res["val_images"],
        "wallclock_s": round(job.wallclock_s, 1),
        "reused": job.reused,
        "precision": run_precision(job.run_dir),
        "encoder": res["init"],
        "config": cfg,
    }
    if pre is not None and (pre.run_dir / "config.yaml").exists():
        pcfg = yaml.safe_load((pre.run_dir / "config.yaml").read_text())
        row["pretrain"] = {
            "objective": pcfg["objective"],
            "steps": pcfg["train"]["max_steps"],
            "wallclock_s": round(pre.wallclock_s, 1),
        }
    return row


def _precisions(rows: list[dict[str, Any]]) -> str:
    """What the rows' runs computed in, from their ``environment.jsonl`` (e.g. ``fp32``)."""
    return ", ".join(sorted({r.get("precision", "unrecorded") for r in rows})) or "no rows"


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The results table: mIoU and gain over scratch (same backbone and seed), then IoUs."""
    lines = [
        f"CamVid test split (11 classes), commit {meta['commit'][:7]}, {meta['date']}, "
        f"preset {meta['preset']}, layer decay {meta.get('layer_decay', 1.0):g}, "
        f"blr {meta.get('blr') or 'of the config'}, "
        f"train.amp={meta.get('amp', 'auto')} ({_precisions(rows)})",
        "",
        "| backbone | init | seed | mIoU | pixel acc | gain vs scratch | steps | wall |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    scratch = {(r["backbone"], r["seed"]): r["miou"] for r in rows if r["init"] == "scratch"}
    for r in rows:
        gain = r["miou"] - scratch.get((r["backbone"], r["seed"]), float("nan"))
        shown = "" if r["init"] == "scratch" else f"{gain:+.2f}"
        lines.append(
            f"| {r['backbone']} | {r['init']} | {r['seed']} | {r['miou']:.2f} | "
            f"{r['pixel_acc']:.2f} | {shown} | {r['steps']} | {r['wallclock_s'] / 60:.1f} min |"
        )
    classes = list(rows[0]["per_class_iou"]) if rows else []
    lines += ["", "Per-class IoU (%; - : absent from truth and prediction)", ""]
    lines.append("| backbone | init | seed | " + " | ".join(classes) + " |")
    lines.append("|---|---|---:|" + "---:|" * len(classes))
    for r in rows:
        ious = [r["per_class_iou"][c] for c in classes]
        cells = " | ".join("-" if v is None else f"{v:.1f}" for v in ious)
        lines.append(f"| {r['backbone']} | {r['init']} | {r['seed']} | {cells} |")
    return "\n".join(lines) + "\n"


def parse_encoders(specs: list[str], keys: list[str]) -> dict[str, dict[str, str]]:
    """``BACKBONE:NAME=PATH`` flags -> {backbone: {init name: path}}."""
    out: dict[str, dict[str, str]] = {k: {} for k in keys}
    for spec in specs:
        head, _, path = spec.partition("=")
        key, _, name = head.partition(":")
        if not (path and name and key in out) or name == "scratch":
            raise SystemExit(
                f"error: --encoder {spec!r}: expected BACKBONE:NAME=PATH with BACKBONE one of "
                f"{', '.join(keys)} and NAME not 'scratch'"
            )
        out[key][name] = path
    return out


def plan_backbone(
    a: argparse.Namespace, key: str, named: dict[str, str], log_dir: Path
) -> list[tuple[str, str, evidence.Job | None]]:
    """(init, encoder path, its pre-training job) for every row of one backbone."""
    plan: list[tuple[str, str, evidence.Job | None]] = [("scratch", "", None)]
    makes = key in evidence.BACKBONES  # the evidence study can make this backbone's encoders
    missing = [i for i in CIM_INITS if i not in named]
    cim = make_encoders(a, key, log_dir) if (missing and makes) else {}
    for init in CIM_INITS:
        if init in named:
            plan.append((init, named[init], None))
        elif makes:
            plan.append((init, str(cim[init].run_dir), cim[init]))
    plan += [(n, p, None) for n, p in named.items() if n not in CIM_INITS]
    return plan


def run_study(a: argparse.Namespace) -> list[dict[str, Any]]:
    """Encoders first (reused or made), then every segmentation run in one pool, so a short
    ResNet job fills a slot as soon as one frees up."""
    keys = a.backbones.split(",")
    named = parse_encoders(a.encoder, keys)
    work = Path(a.work).expanduser().resolve()
    log_dir = work / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in a.seeds.split(",")]
    todo = [
        (key, init, enc, pre, seed)
        for key in keys
        for init, enc, pre in plan_backbone(a, key, named[key], log_dir)
        for seed in seeds
    ]
    with ThreadPoolExecutor(1 if a.in_process else a.parallel) as pool:
        jobs = list(
            pool.map(lambda t: run(a, seg_job(a, t[0], t[1], t[2], t[4], work), log_dir), todo)
        )
    label = {k: backbone_for(k, a.preset == "quick").label for k in keys}
    return [
        make_row(job, label[key], init, seed, pre)
        for job, (key, init, _, pre, seed) in zip(jobs, todo, strict=True)
        if not job.missing
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="standard")
    ap.add_argument("--camvid", default=str(CAMVID), help="folder with train/ and test/")
    ap.add_argument(
        "--backbones", default="vit,resnet", help=f"comma-separated: {', '.join(BACKBONES)}"
    )
    ap.add_argument("--seeds", default="0", help="comma-separated fine-tuning seeds")
    ap.add_argument(
        "--encoder",
        action="append",
        default=[],
        help="BACKBONE:NAME=PATH, an encoder to fine-tune too (or instead of a CIM one: "
        "vit:cim-revdet=PATH); repeatable",
    )
    ap.add_argument(
        "--layer-decay",
        type=float,
        default=1.0,
        help="segment.layer_decay for every row, scratch included (1.0: off, the default)",
    )
    ap.add_argument(
        "--blr",
        type=float,
        default=None,
        help="train.blr for every row, scratch included (default: the config's)",
    )
    ap.add_argument(
        "--steps",
        type=int,
        default=None,
        help="fine-tuning steps of every row, scratch included (default: the preset's, 450 in "
        "standard); given, folders end _steps<N>",
    )
    ap.add_argument(
        "--amp",
        choices=("none", "bf16", "auto"),
        default="none",
        help="train.amp of every fine-tuning (none: fp32 on every machine, the default; "
        "auto is bf16 on CPUs with AMX or AVX512-BF16); other than none, folders end _amp<v>",
    )
    ap.add_argument("--evidence-work", default="runs/evidence")
    ap.add_argument("--cifar", default=str(evidence.CIFAR / "train"))
    ap.add_argument("--cifar-val", default="")
    ap.add_argument("--work", default="runs/camvid_seg")
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--table", default="camvid_segmentation", help="name of the result files")
    ap.add_argument("--parallel", type=int, default=2, help="jobs at a time (threads split)")
    ap.add_argument("--in-process", action="store_true", help="no subprocesses (tests)")
    ap.add_argument("--report-only", action="store_true", help="only tabulate finished jobs")
    return ap.parse_args(argv)


def inputs_exist(a: argparse.Namespace) -> bool:
    """Known backbones and a CamVid folder with train/ and test/ images, else one error line."""
    unknown = set(a.backbones.split(",")) - set(BACKBONES)
    if unknown:
        print(f"error: --backbones: unknown {', '.join(sorted(unknown))}", file=sys.stderr)
        return False
    for split in ("train", "test"):
        if not (Path(a.camvid).expanduser() / split / "images").is_dir():
            print(
                f"error: --camvid: {a.camvid} has no {split}/images (unpack "
                "../shared/data/camvid-240x180.tar.gz into ~/.cache/cimpt/data)",
                file=sys.stderr,
            )
            return False
    return True


def recipe_ok(a: argparse.Namespace) -> bool:
    """Each recipe flag's override passes the config schema's own checks (``train.*`` on load,
    ``segment.*`` as ``cimpt segment`` runs them), before any job starts; else one error line
    naming the flag."""
    if a.steps is not None and a.steps < 1:
        print(f"error: --steps {a.steps}: must be at least 1", file=sys.stderr)
        return False
    for flag, value, override, _ in recipe(a):
        try:
            typed(load_config(CONFIG, [override])).segment.check()
        except ConfigError as e:
            print(f"error: {flag} {value:g}: {e}", file=sys.stderr)
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if not (recipe_ok(a) and inputs_exist(a)):
        return 2
    t0 = time.time()
    rows = run_study(a)
    meta = {
        "preset": a.preset,
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "total_wallclock_s": round(time.time() - t0, 1),
        "parallel": a.parallel,
        "layer_decay": a.layer_decay,
        "blr": a.blr,
        "steps": next(f.value for f in recipe(a) if f.flag == "--steps"),
        "amp": a.amp,
        "cpu_count": os.cpu_count(),
        "command": " ".join(sys.argv),
    }
    write_study(a.out, a.table, {"meta": meta, "rows": rows}, markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
