"""Which generator makes CIM's corruption plausible at our scale? (issue 17, item 3)

The paired variant study (``compare_methods.py``) showed that the default generator stays near
chance (3 % accuracy on masked tokens) after the equal-compute budget, so its samples are not
the "plausible alternatives" the paper describes. This sweep measures, one change at a time,
what moves that: the generator's depth and width, the codebook size, and the length of its
training. Per arm and step count:

1. **Tokenizer.** The equal-compute study's (``compare_methods`` preset ``full``: CIFAR-10,
   batch 128, one epoch); a codebook arm trains its own with the same recipe.
2. **Pre-training.** CIM-REVDET with the study's recipe and ``--steps`` steps (default 177:
   the study's CIM-REVDET budget), but a 1-block width-32 enhancer. The generator is trained
   only by its own masked-token loss on the tokenizer's ids and receives no gradient from the
   enhancer (the study's CIM-RESPIX and CIM-REVDET generators end within 1e-4 in loss), so the
   small enhancer leaves its training unchanged and makes a run cost minutes.
   ``train.clip_grad=0``: the one way an enhancer could reach the generator is the global
   gradient-norm clip (3.0; the study's runs end at a norm of 0.7).
3. **Plausibility.** ``corruption_plausibility.measure`` on the first ``--n`` CIFAR-10 test
   images: the generator's accuracy on masked tokens and, per sampling setting, the share of
   masked tokens replaced, the PSNR of a replaced token's cell in ``decode(z_hat)`` against
   ``decode(z)`` and the share within 20 dB; plus the tokenizer's own held-out evaluation
   (PSNR, codebook usage and perplexity, colour kept).

    python bench/generator_sweep.py [--arms default,gen-deep,...] [--steps 177,708] \
        [--work runs/generator_sweep] [--out docs/results] [--preset full|quick]

writes ``<out>/generator_sweep.{json,md}``. Finished runs are reused (``resume=auto``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare_methods as cm
import corruption_plausibility as cp
from cifar10_evidence import Job, run_job
from records import run_meta, write_study

TINY_ENHANCER = (
    "enhancer.kwargs={embed_dim: 32, depth: 1, num_heads: 2}",
    "enhancer.drop_path=0.0",
    "train.clip_grad=0",
)
#: arm -> the change (the study's ``VARIANTS`` of the same name, plus the defaults).
ARMS: dict[str, tuple[str, ...]] = {
    "default": (),
    **{m.name.removeprefix("cim-revdet-"): m.overrides for m in cm.VARIANTS
       if m.name.endswith(("gen-deep", "gen-wide", "codes256", "codes512"))},
}  # fmt: skip
#: the sampling settings reported (labels of ``corruption_plausibility.SETTINGS``).
REPORTED = ("uniform random id", "T=1 (default)", "T=1, top-k 10", "argmax (T=0)")


def arm_method(arm: str) -> cm.Method:
    """The CIM-REVDET ``Method`` of an arm (its tokenizer overrides give it its own tokenizer)."""
    overrides = ARMS[arm]
    return cm._cim_variant(f"cim-revdet-{arm}", arm, *overrides)


def run_arm(s: cm.Study, arm: str, steps: int, n: int) -> dict[str, Any]:
    """Train the arm's tokenizer (if not done) and generator for ``steps``; measure them."""
    m = arm_method(arm)
    tok = run_job(cm.tokenizer_job(s, m), s.threads, s.work / "logs")
    run = s.work / f"{arm}_{steps}" / "pretrain"
    argv = [*cm.pretrain_argv(s, m, run, steps), *TINY_ENHANCER]
    job = run_job(Job(f"{arm}_{steps}", argv, run, "enhancer.safetensors"), s.threads,
                  s.work / "logs")  # fmt: skip
    t0 = time.time()
    model, loader = cp.load_run(str(run), str(s.val))
    rows = {r["setting"]: r for r in cp.measure(model, loader, n, 20.0)}
    return {
        "arm": arm,
        "overrides": list(ARMS[arm]),
        "steps": steps,
        "pretrain_wallclock_s": round(job.wallclock_s, 1),
        "tokenizer": _tokenizer_eval(tok.run_dir),
        "last": cm.last_metrics(run),
        "generator_acc_masked": rows["T=1 (default)"]["generator_acc_masked"],
        "settings": {k: rows[k] for k in REPORTED},
        "measure_s": round(time.time() - t0, 1),
    }


TOKENIZER_KEYS = ("psnr", "usage", "perplexity", "colour_kept")


def _tokenizer_eval(run: Path) -> dict[str, float | None]:
    """The tokenizer's held-out evaluation (``tokenizer_eval.json``, written after training)."""
    path = run / "tokenizer_eval.json"
    ev = json.loads(path.read_text()) if path.exists() else {}
    return {k: ev.get(k) for k in TOKENIZER_KEYS}


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """One line per (arm, steps): generator accuracy, then replaced / PSNR / close per setting."""
    head = [
        f"Generator sweep, commit {meta['commit'][:7]}, {meta['date']}; {meta['n']} CIFAR-10 "
        f"test images; tiny enhancer (the generator does not see it); {meta['wallclock_min']} "
        "min in all.",
        "",
        "| arm | steps | tokenizer PSNR (dB) / usage / colour kept | generator acc. (masked) | "
        + " | ".join(f"{s}: replaced / cell PSNR / within 20 dB" for s in REPORTED)
        + " |",
        "|---|---:|---:|---:|" + "---:|" * len(REPORTED),
    ]
    for r in rows:
        cells = [
            f"{v['replaced_of_masked']:.1%} / {v['replaced_cell_psnr_db']:.2f} / "
            f"{v['close_of_replaced']:.1%}"
            for v in (r["settings"][k] for k in REPORTED)
        ]
        t = r["tokenizer"]
        tok = " / ".join(
            "—" if t[k] is None else (f"{t[k]:.2f}" if k == "psnr" else f"{100 * t[k]:.0f} %")
            for k in ("psnr", "usage", "colour_kept")
        )
        head.append(
            f"| {r['arm']} | {r['steps']} | {tok} | {r['generator_acc_masked']:.1%} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(head) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(cm.PRESETS), default="full")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"of {', '.join(ARMS)}")
    ap.add_argument("--steps", default="177", help="pre-training steps, comma-separated")
    ap.add_argument("--n", type=int, default=1024, help="test images to measure on")
    ap.add_argument("--data", default=str(cm.CIFAR / "train"))
    ap.add_argument("--val-data", default=str(cm.CIFAR / "test"))
    ap.add_argument("--work", default="runs/generator_sweep")
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--table", default="generator_sweep")
    ap.add_argument("--in-process", action="store_true", help="no subprocesses (tests)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    arms = a.arms.split(",")
    try:
        if bad := sorted(set(arms) - set(ARMS)):
            raise ValueError(f"--arms: unknown {bad}; known: {', '.join(ARMS)}")
        if not all(x.strip().isdigit() and int(x) > 0 for x in a.steps.split(",")):
            raise ValueError(f"--steps: {a.steps!r} must be positive integers, comma-separated")
        steps = [int(x) for x in a.steps.split(",")]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not cm.cifar_folders_exist(a):
        return 2
    s = cm.study_from_args(a)
    t0, rows = time.time(), []
    for n_steps in steps:
        for arm in arms:
            rows.append(run_arm(s, arm, n_steps, a.n))
            meta = run_meta(t0, preset=a.preset, n=a.n, tiny_enhancer=list(TINY_ENHANCER))
            write_study(a.out, a.table, {"meta": meta, "rows": rows}, markdown(rows, meta))
            print(f"[sweep] {arm} at {n_steps} steps measured", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
