"""REVDET's margin above the mask's position prior after a 1-hour CIFAR pre-training (issue 17).

Issue 17's first target: at the end of a 1-hour CIFAR-10 pre-training, REVDET's accuracy should
be at least 15 points above what the mask's position alone gives (``revdet_margin``, logged by
every REVDET run since the position-prior baseline was added). The paired variant study ran
15 minutes per arm (177 steps) and found 7.8 points with BEiT's masks and 12.5 with
``mask.placement=uniform``; this runs the same recipe for an hour of the same machine.

1. **Tokenizer.** The equal-compute study's (``compare_methods`` preset ``full``: CIFAR-10,
   batch 128, one epoch), shared by the arms.
2. **Pre-training.** CIM-REVDET with the study's recipe (the 6-block width-192 ViT, batch
   128, fp32) for ``--steps`` steps, per arm (``ARMS``: BEiT's masks, the paper's; masks
   without a position prior; and, each with BEiT's masks, a colour-weighted tokenizer,
   sampling temperature 0.5, a 512-code tokenizer, a generator of width 256 or of depth 4,
   and colour plus temperature; and the default pre-trained under bf16 autocast, evaluated
   in fp32, for issue 13's learning check on CPUs with bf16 units). Default ``HOUR_STEPS``:
   the steps an hour bought on the study's calibration machine, where 15 minutes (its
   4.3-min tokenizer charged) gave 177 steps at 3.62 s each, so (3,600 s - 258 s) / 3.62 s =
   923 steps. A budget in steps, not seconds, makes the result independent of the machine it
   runs on. ``--equal-time`` gives the arms the first arm's wall-clock instead of its step
   count: each arm's step and the first's are timed round-robin in one process
   (``compare_methods.time_round_robin``, its job's config, a random tokenizer of its
   architecture, batch loading included; median of the preset's rounds), and the arm runs
   ``round(steps * t_first / t_arm)`` steps. The times are saved in
   ``<work>/margin_calibration.json`` and reused (an arm missing there is timed again beside
   the first arm). Arms that change only the tokenizer or the sampling cost the same step; a
   wider generator does not.
3. **The margin.** From the run's ``metrics.jsonl`` (a line every 20 steps, each the mean
   over the training steps since the previous line, 128 images = 8,192 tokens per step):
   ``revdet_acc``, ``revdet_prior_acc`` and ``revdet_margin`` read at the study's 15-minute
   budget (177) and at the end, each reading the mean of the lines logged in the ``WINDOW``
   steps up to it, weighted by the steps each line covers (so at 177: the lines of steps
   100-160, covering steps 81-160; at 923: those of 860-923, covering 841-923); and the
   whole curve.
4. **Downstream** (``--evals``, e.g. ``ft10_seed0,ft10_seed1,ft10_seed2,knn``): the
   equal-compute study's evaluations (``compare_methods.eval_jobs``: fine-tuning at 10 %
   labels per seed, kNN) of every arm's encoder and of scratch, so each arm is paired by
   seed with scratch and with the first arm (BEiT's masks, the paper's default).

    python bench/revdet_margin.py [--arms beit,uniform] [--steps 923] [--equal-time] \
        [--evals KEY,...] [--work runs/revdet_margin] [--out docs/results] [--preset full|quick]

writes ``<out>/<--table>.{json,md}``. Finished runs are reused, interrupted ones resume.
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
from cifar10_evidence import Job, run_job
from records import run_meta, write_study

#: arm -> its overrides of CIM-REVDET.
ARMS: dict[str, tuple[str, ...]] = {
    "beit": ("mask.placement=beit",),
    "uniform": ("mask.placement=uniform",),
    # BEiT's masks with a tokenizer trained under a colour-weighted loss (the 64 px study's
    # finding, ``tokenizer.chroma_weight``): its own tokenizer, trained for the same steps.
    "chroma4": ("mask.placement=beit", "tokenizer.chroma_weight=4.0"),
    # A smaller codebook (its own tokenizer, same steps): an easier guess for the generator.
    "codes512": ("mask.placement=beit", "tokenizer.vocab_size=512"),
    # Sharper samples (the issue-4 ablation's lead: +0.7 at 1.6 epochs, +1.4 at 4, one seed).
    "temp05": ("mask.placement=beit", "generator.temperature=0.5"),
    # A wider generator (the generator sweep's one size change that raised plausibility,
    # +0.6 dB per replaced token at 177 steps), now with the full enhancer and its downstream.
    "genwide": ("mask.placement=beit", "generator.embed_dim=256", "generator.num_heads=8"),
    # A deeper generator (4 blocks; the sweep found no plausibility change at 177 steps).
    "gendeep": ("mask.placement=beit", "generator.depth=4"),
    "chroma4_temp05": (
        "mask.placement=beit",
        "tokenizer.chroma_weight=4.0",
        "generator.temperature=0.5",
    ),
    # The default recipe with the pre-training under bf16 autocast (issue 13: does it learn
    # as fp32 does?). Only on CPUs with bf16 matrix units; the tokenizer stays fp32 (its
    # default precision) and every evaluation stays fp32 (the study's recipe).
    "bf16": ("mask.placement=beit", "train.amp=bf16"),
}
DEFAULT_ARMS = ("beit", "uniform")
STUDY_STEPS = 177  # the equal-compute study's 15-minute CIM-REVDET budget
HOUR_STEPS = 923  # (3,600 s - 258 s of tokenizer) / 3.62 s per step on the same machine
WINDOW = 80  # steps averaged for a reading (4 logged batches at log_every 20)
KEYS = ("revdet_acc", "revdet_prior_acc", "revdet_margin")
EVALS = ("ft10_seed0", "ft10_seed1", "ft10_seed2", "knn")


def curve(run: Path) -> list[dict[str, float]]:
    """The logged ``step`` and ``KEYS`` of a pre-training run, in step order."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{"step": r["step"], **{k: r[k] for k in KEYS}} for r in rows if KEYS[0] in r]


def window_mean(points: list[dict[str, float]], end: int) -> dict[str, float] | None:
    """Mean of ``KEYS`` over the lines logged at steps in ``(end - WINDOW, end]`` (None if
    none), each weighted by the training steps it averages (since the previous line)."""
    prev = {p["step"]: q["step"] for q, p in zip([{"step": 0}, *points], points, strict=False)}
    sel = [p for p in points if end - WINDOW < p["step"] <= end]
    if not sel:
        return None
    weights = [p["step"] - prev[p["step"]] for p in sel]
    means = {k: sum(w * p[k] for w, p in zip(weights, sel, strict=True)) / sum(weights)
             for k in KEYS}  # fmt: skip
    return means | {
        "n_logged": len(sel),
        "first_step": prev[sel[0]["step"]] + 1,
        "last_step": sel[-1]["step"],
    }


def evaluate(s: cm.Study, m: cm.Method, encoder: str, keys: list[str]) -> dict[str, Any]:
    """Run the evaluations ``keys`` of ``m``'s encoder (``""``: scratch); key -> top-1
    (fine-tuning: last evaluation; kNN: at k = 20)."""
    jobs = cm.eval_jobs(s, m, encoder)
    out: dict[str, Any] = {}
    for key in keys:
        result = cm.read_result(run_job(jobs[key], s.threads, s.work / "logs"))
        if result is None:
            raise RuntimeError(f"{jobs[key].name}: no {jobs[key].done_file} in {jobs[key].run_dir}")
        out[key] = result["top1"].get("20") if key == "knn" else result["last"]["top1"]
    return out


def _method(arm: str) -> cm.Method:
    return cm._cim_variant(f"cim-revdet-{arm}", arm, *ARMS[arm])


def equal_time_steps(s: cm.Study, arms: list[str], steps: int) -> dict[str, int]:
    """arm -> steps that cost the first arm's ``steps`` in wall-clock (module doc, 2.),
    from round-robin step times saved in ``<work>/margin_calibration.json``."""
    path = s.work / "margin_calibration.json"
    record: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    ref = arms[0]
    missing = [a for a in arms[1:] if f"{ref}:{a}" not in record]
    if missing:
        arm_of = {_method(a).name: a for a in (ref, *missing)}
        methods = [_method(a) for a in arm_of.values()]
        timed = cm.time_round_robin(
            cm._calibration_steps(s, methods, set(arm_of)), s.preset.calib_steps
        )
        # compare_methods' record (medians, samples, threads, commit, date, load), by arm;
        # each pair gets the round it was timed in: the ratio to the reference is what is used.
        timing = cm._timing_record({arm_of[k]: v for k, v in timed.items()}, s)
        record.update({f"{ref}:{a}": timing for a in missing})
        path.write_text(json.dumps(record, indent=2) + "\n")
    out = {ref: steps}
    for a in arms[1:]:
        t = record[f"{ref}:{a}"]["s_per_step"]
        out[a] = max(1, round(steps * t[ref] / t[a]))
    return out


def run_arm(s: cm.Study, arm: str, steps: int, evals: list[str]) -> dict[str, Any]:
    """Pre-train one arm for ``steps`` (tokenizer first, shared), read its margin readings
    and curve, run its evaluations; its table row."""
    m = _method(arm)
    run_job(cm.tokenizer_job(s, m), s.threads, s.work / "logs")
    run = s.work / f"{arm}_{steps}" / "pretrain"
    job = run_job(Job(f"{arm}_{steps}", cm.pretrain_argv(s, m, run, steps), run,
                      "enhancer.safetensors"), s.threads, s.work / "logs")  # fmt: skip
    points = curve(run)
    home = cm.Method(f"{arm}_{steps}", "revdet")  # evaluations go next to the pre-training
    return {
        "arm": arm,
        "overrides": list(ARMS[arm]),
        "steps": steps,
        "pretrain_wallclock_s": round(job.wallclock_s, 1),
        "at_study_budget": window_mean(points, min(STUDY_STEPS, steps)),
        "at_end": window_mean(points, steps),
        "eval": evaluate(s, home, str(run), evals),
        "curve": points,
    }


def _ft10(evals: dict[str, float]) -> dict[int, float]:
    """seed -> 10 %-label top-1 of one arm's evaluations."""
    return {int(k.removeprefix("ft10_seed")): v for k, v in evals.items() if "ft10_seed" in k}


def downstream_lines(rows: list[dict[str, Any]], scratch: dict[str, float]) -> list[str]:
    """10 % labels per seed, paired gains against scratch and against the first arm; kNN."""
    if not scratch:
        return []
    base = _ft10(rows[0]["eval"])
    lines = [
        "",
        "| arm | 10 % top-1 per seed | mean | gain vs scratch (paired) | minus "
        f"{rows[0]['arm']} (paired) | kNN@20 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    named = [("scratch", scratch), *((r["arm"], r["eval"]) for r in rows)]
    for i, (name, ev) in enumerate(named):
        seeds = _ft10(ev)
        mean = sum(seeds.values()) / len(seeds) if seeds else None
        # No pairing of a row with itself (scratch with scratch, the first arm with itself).
        vs = [cm._fmt_pair(cm.paired(seeds, other)) if i not in skip else "—"
              for other, skip in ((_ft10(scratch), (0,)), (base, (0, 1)))]  # fmt: skip
        per = " / ".join(f"{seeds[k]:.2f}" for k in sorted(seeds))
        lines.append(
            f"| {name} | {per} | {cm._fmt(mean)} | {vs[0]} | {vs[1]} | {cm._fmt(ev.get('knn'))} |"
        )
    return lines


def _pct(r: dict[str, float] | None, key: str) -> str:
    """A reading's value in percent, "—" when the run has none."""
    return "—" if r is None else f"{100 * r[key]:.2f}"


def markdown(
    rows: list[dict[str, Any]], meta: dict[str, Any], scratch: dict[str, float] | None = None
) -> str:
    """The margin table (one row per arm) and, with evaluations, the downstream table."""
    head = [
        f"REVDET margin above the position prior, commit {meta['commit'][:7]}, {meta['date']}; "
        f"each reading the step-weighted mean of the lines logged in the {WINDOW} steps up to "
        "it (percent).",
        "",
        "| arm | steps | wall min | at step "
        f"{STUDY_STEPS} (or the end): acc / prior / margin | at the end: acc / prior / margin |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        cells = [" / ".join(_pct(r[w], k) for k in KEYS) for w in ("at_study_budget", "at_end")]
        wall = r["pretrain_wallclock_s"] / 60
        head.append(f"| {r['arm']} | {r['steps']} | {wall:.1f} | {cells[0]} | {cells[1]} |")
    return "\n".join(head + downstream_lines(rows, scratch or {})) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(cm.PRESETS), default="full")
    ap.add_argument("--arms", default=",".join(DEFAULT_ARMS), help=f"of {', '.join(ARMS)}")
    ap.add_argument("--steps", type=int, default=HOUR_STEPS, help="pre-training steps per arm")
    ap.add_argument(
        "--equal-time", action="store_true",
        help="give each arm the first arm's wall-clock, from timed steps, not its step count",
    )  # fmt: skip
    ap.add_argument("--data", default=str(cm.CIFAR / "train"))
    ap.add_argument("--val-data", default=str(cm.CIFAR / "test"))
    ap.add_argument("--evals", default="", help=f"comma-separated, of {', '.join(EVALS)}")
    ap.add_argument("--work", default="runs/revdet_margin")
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--table", default="revdet_margin")
    ap.add_argument("--in-process", action="store_true", help="no subprocesses (tests)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    arms = a.arms.split(",")
    if bad := sorted(set(arms) - set(ARMS)):
        print(f"error: --arms: unknown {bad}; known: {', '.join(ARMS)}", file=sys.stderr)
        return 2
    evals = [e for e in a.evals.split(",") if e]
    if bad := sorted(set(evals) - set(EVALS)):
        print(f"error: --evals: unknown {bad}; known: {', '.join(EVALS)}", file=sys.stderr)
        return 2
    if a.steps < 1:
        print(f"error: --steps must be a positive integer, got {a.steps}", file=sys.stderr)
        return 2
    if not cm.cifar_folders_exist(a):
        return 2
    s = cm.study_from_args(a)
    t0, rows = time.time(), []
    budget = equal_time_steps(s, arms, a.steps) if a.equal_time else dict.fromkeys(arms, a.steps)
    scratch = evaluate(s, cm.Method("scratch", None), "", evals)
    for arm in arms:
        rows.append(run_arm(s, arm, budget[arm], evals))
        meta = run_meta(t0, preset=a.preset, window_steps=WINDOW, equal_time=a.equal_time)
        record = {"meta": meta, "scratch": scratch, "rows": rows}
        write_study(a.out, a.table, record, markdown(rows, meta, scratch))
        print(f"[margin] {arm}: {budget[arm]} steps measured", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
