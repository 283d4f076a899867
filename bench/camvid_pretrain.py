"""In-domain pre-training for CamVid segmentation: CIM-REVDET and MAE on CamVid's own frames,
at equal compute, then segmented (issue 12).

The CIFAR-10 encoders of ``camvid_segmentation.py`` gain about 2 mIoU on CamVid, whatever the
method: they were pre-trained on 32 px objects, not road scenes. Here each arm pre-trains the
method comparison's ViT (e192-d6-h3, patch 4; ``camvid_segmentation.VIT192``) on the 367
CamVid training frames themselves (no labels), at 64 px views (a 16x16 grid: the grid of the
segmentation's 64 px crops, so no position embedding is resampled):

- **cim-revdet**: CIM-REVDET with a 64 px CamVid tokenizer made by ``tokenizer_64px.py``
  (``--tokenizer-recipe``, 4 px tokens); its measured training wall time is charged to the
  arm's budget, as the CIFAR studies charge theirs.
- **mae**: MAE (mask ratio 0.75), as in the method comparison.

Both with the same batch, views (``data.crop_scale``) and lr recipe; warm-up a tenth of the
steps. The steps fill ``--budget-min`` of wall-clock: one training step of each arm is built
from its job's config and timed round-robin in one process (``compare_methods``'s
calibration), and ``steps = (budget - charge) / seconds per step``. Then
``camvid_segmentation.py --backbones vit192`` fine-tunes scratch and both encoders with its
one recipe for each ``--seeds`` seed and writes ``<out>/<table>.{json,md}``; the
pre-training record (budgets, calibration, last losses) goes to ``<work>/pretrain.json``.

    python bench/camvid_pretrain.py [--budget-min 20] [--seeds 0,1,2] [--batch 32] \
        [--tokenizer-record docs/results/tokenizer_64px.json] [--tokenizer-recipe ds4] \
        [--work runs/camvid_pretrain] [--out docs/results] [--table camvid_indomain]

Finished jobs are reused (``resume=auto``), and the calibration and budgets are saved in
``<work>/pretrain.json``: a rerun with another ``--budget-min`` or ``--batch`` is refused (use
another ``--work``). The tokenizer's charge is its recorded training wall time, so the record
should come from the same machine (a faster machine would over-charge the CIM arm).
``--preset quick`` (tiny model, a few steps) is for the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import camvid_segmentation as seg
import cifar10_evidence
import compare_methods as cm
from cifar10_evidence import Job, run_job
from cimpt.errors import CimptError
from records import git_commit, under_root

ARMS = {m.name: m for m in cm.METHODS if m.name in ("cim-revdet", "mae")}
QUICK_ARCH = ("enhancer.kwargs={embed_dim: 32, depth: 1, num_heads: 2}",)
# the quick sizes of the generator and the MAE decoder (the tokenizer's come from its file)
QUICK_EXTRA = tuple(o for o in cm.QUICK_EXTRA if not o.startswith("tokenizer."))


def pretrain_argv(a: argparse.Namespace, arm: str, run: Path, steps: int, tok: Path) -> list[str]:
    """``cimpt pretrain`` of one arm on the CamVid training frames at 64 px views."""
    m = ARMS[arm]
    n_frames = cifar10_evidence.count_images(Path(a.camvid).expanduser() / "train" / "images")
    warmup = max(1, steps // 10) / max(1, n_frames // a.batch)  # a tenth of the steps, in epochs
    quick = QUICK_ARCH if a.preset == "quick" else ()
    return [
        "pretrain", cm.PRETRAIN_CONFIG, f"run.dir={run}", f"objective={m.objective}",
        f"data.path={Path(a.camvid).expanduser() / 'train' / 'images'}",
        *seg.seg_arch(seg.VIT192), *quick, "data.img_size=64", "data.crop_scale=[0.2,1.0]",
        "data.num_workers=1", "run.progress=false", "train.amp=none",
        f"train.batch_size={a.batch}", f"train.max_steps={steps}", f"train.warmup_epochs={warmup}",
        f"tokenizer.checkpoint={tok}", "tokenizer.downsample=4", "run.ckpt_every=200",
        "run.vis_every=100000", *m.overrides, *(QUICK_EXTRA if quick else ()),
    ]  # fmt: skip


def tokenizer_charge(a: argparse.Namespace) -> tuple[Path, float]:
    """The CamVid tokenizer's folder and the wall seconds its training took (its study's record)."""
    record = under_root(a.tokenizer_record)
    recipes = {r["recipe"]: r for r in json.loads(record.read_text())["recipes"]}
    if a.tokenizer_recipe not in recipes:
        raise ValueError(f"--tokenizer-recipe: {a.tokenizer_recipe!r} is not in {record}")
    r = recipes[a.tokenizer_recipe]
    return Path(r["run_dir"]), float(r["cost"]["wall_s"])


def calibrate(a: argparse.Namespace, tok: Path, work: Path) -> dict[str, float]:
    """Median seconds per step of each arm, timed round-robin in this process."""
    import torch

    from cimpt.pretrain import build_cim_task

    torch.set_num_threads(os.cpu_count() or 1)
    steps = {
        arm: cm._stepper(pretrain_argv(a, arm, work / "calibration" / arm, 1, tok), build_cim_task)
        for arm in ARMS
    }
    times = cm.time_round_robin(steps, a.calib_steps)
    return {k: statistics.median(v) for k, v in times.items()}


def pretrain_all(a: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Calibrate, then pre-train each arm for its budget; the record (also saved in work)."""
    tok, charge = tokenizer_charge(a)
    saved = work / "pretrain.json"
    record = json.loads(saved.read_text()) if saved.exists() else {}
    if "s_per_step" not in record:
        record = {"s_per_step": calibrate(a, tok, work), "tokenizer": str(tok),
                  "tokenizer_charge_s": charge, "budget_s": 60 * a.budget_min,
                  "batch": a.batch, "commit": git_commit()}  # fmt: skip
    elif (record["budget_s"], record.get("batch")) != (60 * a.budget_min, a.batch):
        raise ValueError(
            f"--work: {work} was calibrated for --budget-min {record['budget_s'] / 60:g} "
            f"--batch {record.get('batch')}; use another --work for other budgets"
        )
    for arm in ARMS:
        own = record["budget_s"] - (charge if arm == "cim-revdet" else 0.0)
        steps = max(1, int(own / record["s_per_step"][arm]))
        run = work / arm
        job = run_job(Job(f"camvid_{arm}", pretrain_argv(a, arm, run, steps, tok), run,
                          "enhancer.safetensors"), os.cpu_count() or 1, work / "logs")  # fmt: skip
        record[arm] = {
            "steps": steps,
            "images_seen": steps * a.batch,
            "wallclock_s": round(job.wallclock_s, 1),
            "last": cm.last_metrics(run),
        }
        saved.write_text(json.dumps(record, indent=2) + "\n")
    return record


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=("standard", "quick"), default="standard")
    ap.add_argument("--budget-min", type=float, default=20.0, help="wall minutes per arm")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--calib-steps", type=int, default=6)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--camvid", default=str(seg.CAMVID))
    ap.add_argument("--tokenizer-record", default="docs/results/tokenizer_64px.json")
    ap.add_argument("--tokenizer-recipe", default="ds4")
    ap.add_argument("--work", default="runs/camvid_pretrain")
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--table", default="camvid_indomain")
    ap.add_argument("--in-process", action="store_true", help="no subprocesses (tests)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    work = Path(a.work).expanduser().resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    cifar10_evidence.IN_PROCESS = a.in_process
    if not seg.inputs_exist(argparse.Namespace(backbones="vit192", camvid=a.camvid)):
        return 2
    try:
        pretrain_all(a, work)
    except (ValueError, OSError, KeyError, CimptError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    encoders = [f"--encoder=vit192:camvid-{arm}={work / arm}" for arm in ARMS]
    more = ["--in-process", "--parallel", "1"] if a.in_process else ["--parallel", "1"]
    t0 = time.time()
    code = seg.main(["--preset", a.preset, "--camvid", a.camvid, "--backbones", "vit192",
                     "--seeds", a.seeds, *encoders, "--work", str(work / "segment"),
                     "--out", a.out, "--table", a.table, *more])  # fmt: skip
    print(f"[camvid-pretrain] segmentation took {(time.time() - t0) / 60:.1f} min", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
