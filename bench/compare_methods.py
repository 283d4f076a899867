"""Is CIM worth choosing? CIM against MAE, SimMIM and BEiT on CIFAR-10 at equal compute (issue 11).

Every arm pre-trains the **same encoder** (the ViT of ``configs/cifar10_vit.yaml``: width 192,
depth 6, 3 heads, patch 4 at 32 px) with the ``cimpt`` command line and nothing else, for
the **same pre-training wall-clock**, then is evaluated with one identical recipe:

1. **Calibration.** In one process, the training step of every method (and of the
   tokenizer) is built from exactly its job's config and timed round-robin, batch loading
   included, one step of each per round; the median over rounds is its seconds per step.
   Load from other processes then hits every method alike. Saved to
   ``<work>/calibration.json`` and reused.
2. **Budgets.** Each method gets ``budget_s`` of pre-training: ``max_steps = budget_s /
   s_per_step``. The tokenizer's cost (its calibrated steps x seconds) is **charged to BEiT
   and to the three CIM arms**, which need it: their budget is ``budget_s`` minus that.
   A step budget from a calibration, rather than a wall-clock stop, makes the comparison
   immune to load that other processes put on the machine later; the measured wall time of
   each job is reported beside it.
3. **Evaluation** of every encoder: ``cimpt knn`` (k 20 / 200, all training labels),
   ``cimpt linprobe``, ``cimpt finetune`` at 10 % labels (class-balanced, several seeds; the
   seed fixes the label subset and training, and every gain is paired with the scratch run
   of the same seed) and at 100 % labels. They run in rounds across the arms, most
   informative first (``EVAL_ROUNDS``), and the table is rewritten after each round, so
   a study stopped early still compares every arm on the same evaluations.

Arms: scratch, MAE, SimMIM, BEiT, CIM-RESPIX, CIM-REVDET, CIM-REVDET with argmax corruption
(``generator.temperature=0``, the paper's claim 4). Per-method pre-training recipe: the
CIM config's (AdamW, blr 1.5e-3, batch 128, warm-up + cosine), with each paper's own
choices where they differ (MAE: no drop path, mask ratio 0.75; SimMIM: ratio 0.6, 8 px mask
patches; BEiT: blockwise ratio 0.4). Fine-tuning: ``configs/cifar10_finetune.yaml`` with layer
decay 0.75 for every pre-trained encoder (all four papers fine-tune with layer decay) and 1.0
for scratch (layer decay slows a random network's lower layers).

**CIM variants (issue 17).** ``VARIANTS`` are CIM-REVDET arms with one change each (masks
without a position prior, top-k 10 or temperature 0.5 sampling, a deeper or wider generator,
256 or 512 codes; a codebook arm trains, and pays for, a tokenizer of its own), and
``--variant "NAME key=value ..."`` adds any other (e.g. a combination). Name them in
``--methods`` beside ``scratch,cim-revdet`` with the same ``--work``: the finished arms are
reused, the new ones are calibrated beside CIM-REVDET and scaled to its saved time (so their
budgets match the first calibration's), and the table gets each variant minus CIM-REVDET,
paired by seed. ``--rounds`` limits the evaluations (issue 17 asks for the 10 % seeds and
kNN), ``--table`` names the result files.

Presets: ``full`` (the study in docs/BENCHMARKS.md, about 4 h of machine time; the script
prints its estimate after the calibration) and ``quick`` (a tiny ViT, a few steps, tiny data:
minutes; run by the test suite, its numbers mean nothing). Finished jobs are reused and
interrupted ones resume (``resume=auto``), so the study can run in parts. A machine that lost
the work directory continues from the published table with ``--restore TABLE.json``
(``study_restore``: same step budgets, its evaluations kept, re-created encoders checked).

    python bench/compare_methods.py [--preset full|quick] [--data DIR --val-data DIR] \
        [--work runs/methods] [--out docs/results] [--methods a,b,...] \
        [--variant "NAME key=value ..."] [--rounds knn,ft10_seed0,...] [--table NAME] \
        [--restore docs/results/cifar10_methods.json]
    python bench/compare_methods.py --render [--out docs/results] [--table NAME]  # .md from .json

writes ``<out>/<table>.json`` (default ``cifar10_methods``; one record per method with every
job's config and timing) and ``<out>/<table>.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cifar10_evidence
import study_restore
from cifar10_evidence import CIFAR, VIT, Job, cifar_folders_exist, count_images, run_job
from records import git_commit, under_root, write_study

PRETRAIN_CONFIG = "configs/cifar10_vit.yaml"
FINETUNE_CONFIG = "configs/cifar10_finetune.yaml"
LINPROBE_CONFIG = "configs/cifar10_linprobe.yaml"
CALIB_WARMUP = 2  # untimed calibration rounds (first steps allocate and warm caches)


@dataclass(frozen=True)
class Method:
    """One arm: ``objective`` (None: scratch) with the overrides its paper asks for.

    ``tokenizer_overrides`` (e.g. a codebook size) give the arm a tokenizer of its own,
    trained and charged like the shared one; the same overrides reach its pre-training."""

    name: str
    objective: str | None
    overrides: tuple[str, ...] = ()
    tokenizer: bool = False  # pays for the tokenizer it uses
    tokenizer_overrides: tuple[str, ...] = ()
    change: str = ""  # what the arm changes, for the table

    @property
    def tokenizer_name(self) -> str:
        """The run folder (under the study's work) and calibration key of its tokenizer."""
        return f"tokenizer_{self.name}" if self.tokenizer_overrides else "tokenizer"


METHODS = (
    Method("scratch", None),
    Method("mae", "mae", ("enhancer.drop_path=0.0", "mae.mask_ratio=0.75")),
    Method("simmim", "simmim", ("simmim.mask_ratio=0.6", "simmim.mask_patch_size=8")),
    Method("beit", "beit", ("mask.ratio=0.4",), tokenizer=True),
    Method("cim-respix", "respix", tokenizer=True),
    Method("cim-revdet", "revdet", tokenizer=True),
    Method("cim-revdet-argmax", "revdet", ("generator.temperature=0",), tokenizer=True),
)


def _cim_variant(name: str, change: str, *overrides: str) -> Method:
    tok = tuple(o for o in overrides if o.startswith("tokenizer."))
    return Method(name, "revdet", overrides, True, tok, change)


# Issue 17: one change at a time to CIM-REVDET, compared with it at the same wall-clock
# (``--methods scratch,cim-revdet,<variants>``; ``--variant`` adds more, e.g. combinations).
VARIANTS = (
    _cim_variant("cim-revdet-uniform", "masks without a position prior", "mask.placement=uniform"),
    _cim_variant("cim-revdet-topk10", "samples among the 10 likeliest ids", "generator.top_k=10"),
    _cim_variant("cim-revdet-t0.5", "sampling temperature 0.5", "generator.temperature=0.5"),
    _cim_variant("cim-revdet-gen-deep", "generator depth 4 (was 2)", "generator.depth=4"),
    _cim_variant(
        "cim-revdet-gen-wide", "generator width 256 (was 128)",
        "generator.embed_dim=256", "generator.num_heads=8",
    ),
    _cim_variant("cim-revdet-codes256", "256 codes (was 1,024)", "tokenizer.vocab_size=256"),
    _cim_variant("cim-revdet-codes512", "512 codes (was 1,024)", "tokenizer.vocab_size=512"),
)  # fmt: skip


def parse_variant(spec: str) -> Method:
    """``--variant "NAME key=value ..."``: a CIM-REVDET arm with these overrides (``tokenizer.*``
    ones give it its own tokenizer)."""
    name, *overrides = spec.split()
    if not overrides or not all("=" in o for o in overrides):
        raise ValueError(f"--variant {spec!r}: expected 'NAME key=value ...'")
    return _cim_variant(name, " ".join(overrides), *overrides)


@dataclass(frozen=True)
class Preset:
    """Budgets: pre-training seconds per method, epochs of each evaluation, seeds."""

    budget_s: float
    tokenizer_epochs: float
    ft10_epochs: float
    ft100_epochs: float
    linprobe_epochs: float
    seeds: tuple[int, ...]
    calib_steps: int  # timed rounds of the calibration (after CALIB_WARMUP)
    batch: int = 128
    arch: tuple[str, ...] = (
        *VIT.arch[:3],
        "enhancer.kwargs={embed_dim: 192, depth: 6, num_heads: 3}",
    )
    extra: tuple[str, ...] = ()


QUICK_EXTRA = (
    "generator.depth=1",
    "generator.embed_dim=32",
    "generator.num_heads=2",
    "tokenizer.vocab_size=16",
    "tokenizer.width=8",
    "tokenizer.res_blocks=1",
    "tokenizer.embed_dim=8",
    "mae.decoder_dim=32",
    "mae.decoder_depth=1",
    "mae.decoder_heads=2",
)
PRESETS = {
    # About 4.5 h on the 2-core dev machine: 6 x 15 min pre-training, then per method kNN
    # (60,000 forwards), 1 linear-probe epoch, 3 x 4 epochs at 10 % and half an epoch at 100 %.
    "full": Preset(900, 1.0, 4, 0.5, 1, (0, 1, 2), 15),
    "quick": Preset(
        4.0, 0.05, 1, 1, 1, (0,), 2, batch=8,
        arch=(*VIT.arch[:3], "enhancer.kwargs={embed_dim: 32, depth: 1, num_heads: 2}"),
        extra=QUICK_EXTRA,
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

    def steps(self, epochs: float, n_images: int) -> int:
        return max(1, round(epochs * (n_images // self.preset.batch)))

    @property
    def tokenizer_steps(self) -> int:
        """Steps of every tokenizer run (the shared one and an arm's own alike)."""
        return self.steps(self.preset.tokenizer_epochs, self.n_train)

    def common(self, run: Path) -> list[str]:
        """Overrides every job shares: output, data, the encoder, quiet logs."""
        return [
            f"run.dir={run}",
            f"data.path={self.data}",
            *self.preset.arch,
            "run.progress=false",
            "data.num_workers=1",
            f"train.batch_size={self.preset.batch}",
            # fp32 on every machine: train.amp=auto picks bf16 on CPUs with bf16 units, which
            # would make replicates on different CPUs differ in precision, not just rounding,
            # and a --restore there could never re-create the published encoders.
            "train.amp=none",
        ]


def study_from_args(a: argparse.Namespace) -> Study:
    """The study of a script's common arguments (``--data``, ``--val-data``, ``--work``,
    ``--preset``, ``--in-process``): paths resolved, ``<work>/logs`` made, jobs in-process or
    not as asked."""
    cifar10_evidence.IN_PROCESS = a.in_process
    data = Path(a.data).expanduser().resolve()
    work = Path(a.work).expanduser().resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    return Study(data, Path(a.val_data).expanduser().resolve(), work, PRESETS[a.preset],
                 count_images(data), os.cpu_count() or 1)  # fmt: skip


# ---- calibration ---------------------------------------------------------------------------
def tokenizer_argv(s: Study, run: Path, steps: int, overrides: tuple[str, ...] = ()) -> list[str]:
    return [
        "tokenizer", "train", "configs/cifar10_tokenizer.yaml",
        *s.common(run)[:2], "run.progress=false", "data.num_workers=1", "train.amp=none",
        f"train.batch_size={s.preset.batch}",
        f"data.val_path={s.val}", f"train.max_steps={steps}", *s.preset.extra, *overrides,
    ]  # fmt: skip


def tokenizer_job(s: Study, m: Method) -> Job:
    """The tokenizer run arm ``m`` uses (the shared one unless it changes the tokenizer)."""
    run = s.work / m.tokenizer_name
    argv = tokenizer_argv(s, run, s.tokenizer_steps, m.tokenizer_overrides)
    return Job(m.tokenizer_name, argv, run, "tokenizer.safetensors")


def pretrain_argv(s: Study, m: Method, run: Path, steps: int) -> list[str]:
    return [
        "pretrain", PRETRAIN_CONFIG, *s.common(run),
        f"objective={m.objective}", f"tokenizer.checkpoint={s.work / m.tokenizer_name}",
        f"train.max_steps={steps}", "train.warmup_epochs=0.25",
        "run.ckpt_every=200", "run.vis_every=400", *s.preset.extra, *m.overrides,
    ]  # fmt: skip


def job_trainer(argv: list[str], build: Callable[[Any], Any]) -> tuple[Any, Any]:
    """``(trainer, loader)`` of the job ``argv``: its config, task and Trainer built exactly
    as the job builds them, and an in-process loader (no workers) of its data."""
    from cimpt.config import load_config
    from cimpt.data import build_loader
    from cimpt.engine.loop import Trainer

    config = next(a for a in argv if a.endswith(".yaml"))
    cfg = load_config(config, [a for a in argv if "=" in a])
    task = build(cfg)
    trainer = Trainer(task, cfg)
    return trainer, build_loader(task.dataset, trainer.micro, 0, task.collate, seed=int(cfg.seed))


def random_tokenizer(s: Study, root: Path, m: Method | None = None) -> Path:
    """A randomly initialized tokenizer of the study's architecture (with ``m``'s tokenizer
    overrides), saved under ``root``: what timing needs (a tokenizer's cost does not depend
    on its weights)."""
    from cimpt.config import load_config
    from cimpt.tokenizers.load import build_tokenizer, save_tokenizer

    name, extra = (m.tokenizer_name, m.tokenizer_overrides) if m else ("tokenizer", ())
    argv = tokenizer_argv(s, root / name, 1, extra)
    cfg = load_config(argv[2], [a for a in argv if "=" in a])
    return save_tokenizer(build_tokenizer(cfg.tokenizer), root / f"{name}.safetensors")


def _stepper(argv: list[str], build: Callable[[Any], Any]) -> Callable[[], object]:
    """One training step of the job ``argv`` (its config built exactly as the job's), its
    batch loaded in the same call by an in-process loader (data time counted)."""
    trainer, loader = job_trainer(argv, build)
    it = iter(loader)

    def next_batch() -> dict[str, Any]:
        nonlocal it
        try:
            return next(it)
        except StopIteration:
            it = iter(loader)
            return next(it)

    return lambda: trainer.train_step(next_batch)


def time_round_robin(steps: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds of each step over ``rounds`` timed rounds after ``CALIB_WARMUP`` untimed
    ones; every round runs each step once in turn, so other load hits them alike."""
    times: dict[str, list[float]] = {k: [] for k in steps}
    for rnd in range(CALIB_WARMUP + rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            if rnd >= CALIB_WARMUP:
                times[name].append(time.perf_counter() - t0)
    return times


def _calibration_steps(
    s: Study, methods: list[Method], names: set[str]
) -> dict[str, Callable[[], object]]:
    """The steps (tokenizer runs and pre-training arms) named in ``names``, each built from
    its job's config with a random tokenizer of the arm's architecture."""
    import torch

    from cimpt.pretrain import build_cim_task
    from cimpt.tokenizers.train import build_tokenizer_task

    torch.set_num_threads(s.threads)
    root = s.work / "calibration"
    steps: dict[str, Callable[[], object]] = {}
    for m in methods:
        if m.tokenizer and m.tokenizer_name in names and m.tokenizer_name not in steps:
            argv = tokenizer_argv(s, root / m.tokenizer_name, 1, m.tokenizer_overrides)
            steps[m.tokenizer_name] = _stepper(argv, build_tokenizer_task)
    for m in methods:
        if m.objective and m.name in names:
            tok = random_tokenizer(s, root, m)
            argv = [*pretrain_argv(s, m, root / m.name, 1), f"tokenizer.checkpoint={tok}"]
            steps[m.name] = _stepper(argv, build_cim_task)
    return steps


def _timing_record(times: dict[str, list[float]], s: Study) -> dict[str, Any]:
    return {
        "s_per_step": {k: statistics.median(v) for k, v in times.items()},
        "samples": times,
        "threads": s.threads,
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "loadavg_after": os.getloadavg(),  # other load on the machine while calibrating
    }


def calibrate(s: Study, methods: list[Method]) -> dict[str, float]:
    """Seconds per step of each tokenizer and of each method's pre-training (module doc).

    In one process, round-robin: every round times one step of each method in turn, so
    load from other processes hits them alike; the median over rounds is kept. Tokenizer
    methods get a randomly initialized tokenizer of their architecture (its cost does not
    depend on its weights), so the calibration needs no trained tokenizer.

    Saved to ``<work>/calibration.json`` and reused. Arms added to a calibrated study are
    timed in new rounds together with a reference arm of the saved calibration, and scaled
    by that arm's saved time over its new one, so that load at a later date does not change
    their budgets relative to the first arms. Each addition is recorded under ``"added"``.
    """
    path = s.work / "calibration.json"
    needed = {m.tokenizer_name for m in methods if m.tokenizer}
    needed |= {m.name for m in methods if m.objective}
    if not path.exists():
        times = time_round_robin(_calibration_steps(s, methods, needed), s.preset.calib_steps)
        record = _timing_record(times, s)
        path.write_text(json.dumps(record, indent=2) + "\n")
        return record["s_per_step"]
    record = json.loads(path.read_text())
    saved: dict[str, float] = record["s_per_step"]
    missing = needed - set(saved)
    if not missing:
        return saved
    # The reference: CIM-REVDET, which the variants change, else any saved arm.
    pool = sorted([*methods, *METHODS], key=lambda m: m.name != "cim-revdet")
    ref = next(m for m in pool if m.objective and m.name in saved)
    # The reference is timed once even when it is also one of the arms (``--methods`` lists
    # cim-revdet beside its variants): two trainers would share, and lock, one run folder.
    arms = methods if ref in methods else [*methods, ref]
    steps = _calibration_steps(s, arms, missing | {ref.name})
    new = _timing_record(time_round_robin(steps, s.preset.calib_steps), s)
    scale = saved[ref.name] / new["s_per_step"][ref.name]
    saved.update({k: new["s_per_step"][k] * scale for k in missing})
    record.setdefault("added", []).append({**new, "reference": ref.name, "scale": scale})
    path.write_text(json.dumps(record, indent=2) + "\n")
    return saved


def restore_calibration(
    s: Study, methods: list[Method], published: dict[str, dict[str, Any]], source: str
) -> None:
    """``--restore``: the published budgets as ``<work>/calibration.json`` (module
    ``study_restore``); an existing calibration is kept (the finished jobs were made with it).
    Arms the table lacks are calibrated as added arms, scaled to a restored one."""
    if (s.work / "calibration.json").exists():
        print(f"[methods] --restore: keeping {s.work / 'calibration.json'}", flush=True)
        return
    charged = {m.name: m.tokenizer_name for m in (*METHODS, *VARIANTS, *methods) if m.tokenizer}
    calib = study_restore.restored_calibration(published, charged, s.tokenizer_steps)
    path = study_restore.write_calibration(s.work, calib, source)
    print(f"[methods] --restore: calibration rebuilt from {source} ({path})", flush=True)


def _part_flops(model: Any, counts: dict[str, dict[Any, int]]) -> dict[str, int]:
    """FLOPs of one step per part: the model's children, and the frozen tokenizer (its
    modules are not registered in the model, so the counter names them by class)."""
    root = type(model).__name__
    names = [n for n in counts if n != "Global"]

    def total(prefix: str) -> int:
        under = [n for n in names if n == prefix or n.startswith(prefix + ".")]
        # outermost counted modules only (a module's count includes its children's)
        top = [n for n in under if not any(n.startswith(m + ".") for m in under)]
        return sum(sum(counts[n].values()) for n in top)

    parts = {child: total(f"{root}.{child}") for child, _ in model.named_children()}
    tok = [n for n in names if n.split(".")[0] != root]
    parts["tokenizer (frozen)"] = sum(
        sum(counts[n].values()) for n in tok if not any(n.startswith(m + ".") for m in tok)
    )
    parts["total"] = sum(counts["Global"].values())
    return parts


def count_flops(s: Study, methods: list[Method]) -> dict[str, dict[str, float]]:
    """GFLOPs per image by torch's FLOP counter, per method: ``step`` for one training step
    (forward + backward + AdamW), and the forward pass per part (the counter attributes
    forward work to modules cleanly, backward work less so). Saved to ``<work>/flops.json``
    and reused; arms it lacks are counted and added."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from cimpt.pretrain import build_cim_task

    path = s.work / "flops.json"
    out: dict[str, dict[str, float]] = json.loads(path.read_text()) if path.exists() else {}
    todo = [m for m in methods if m.objective and m.name not in out]
    if not todo:
        return out
    for m in todo:
        tok = random_tokenizer(s, s.work / "calibration", m)
        argv = [*pretrain_argv(s, m, s.work / "flops" / m.name, 1), f"tokenizer.checkpoint={tok}"]
        trainer, loader = job_trainer(argv, build_cim_task)
        batch: dict[str, Any] = next(iter(loader))
        with FlopCounterMode(display=False) as step:
            trainer.train_step(itertools.repeat(batch).__next__)
        with FlopCounterMode(display=False) as fwd, torch.no_grad():
            trainer.model(trainer.to_device(batch))
        n = int(batch["x"].shape[0])
        parts = _part_flops(trainer.model, fwd.get_flop_counts())
        parts = {f"forward {k}": v for k, v in parts.items()}
        parts["step"] = step.get_total_flops()
        out[m.name] = {k: v / n / 1e9 for k, v in parts.items()}
    path.write_text(json.dumps(out, indent=2) + "\n")
    return out


def budget_steps(s: Study, calib: dict[str, float], m: Method, tok_steps: int) -> dict[str, Any]:
    """Pre-training steps that fill ``budget_s`` (minus the tokenizer's cost when charged)."""
    tok_cost = tok_steps * calib[m.tokenizer_name] if m.tokenizer else 0.0
    own = max(0.0, s.preset.budget_s - tok_cost)
    steps = max(1, int(own / calib[m.name]))
    return {
        "budget_s": s.preset.budget_s,
        "tokenizer_charge_s": tok_cost,  # unrounded: a quick tokenizer costs well under 0.1 s
        "s_per_step": calib[m.name],
        "ms_per_image": 1e3 * calib[m.name] / s.preset.batch,
        "steps": steps,
        "images_seen": steps * s.preset.batch,
    }


# ---- evaluation jobs ------------------------------------------------------------------------
def warmup_epochs(epochs: float) -> float:
    """A fifth of a short run, at most the config's 1 epoch: the configs' 1-epoch warm-up would
    cover a 1-epoch linear probe or a half-epoch fine-tuning whole (the lr would only rise)."""
    return min(1.0, epochs / 5)


def eval_jobs(s: Study, m: Method, encoder: str) -> dict[str, Job]:
    """kNN, linear probe, fine-tuning at 10 % (one per seed) and 100 % labels of one arm."""
    home = s.work / m.name
    p = s.preset
    n10 = round(s.n_train * 0.1)
    ld = "1.0" if m.objective is None else "0.75"
    jobs = {
        "knn": Job(
            f"{m.name}_knn",
            ["knn", FINETUNE_CONFIG, *s.common(home / "knn"), f"init.checkpoint={encoder}",
             f"data.val_path={s.val}"],
            home / "knn", "knn.json",
        ),
        "linprobe": Job(
            f"{m.name}_linprobe",
            ["linprobe", LINPROBE_CONFIG, *s.common(home / "linprobe"),
             f"init.checkpoint={encoder}", f"data.val_path={s.val}",
             f"train.max_steps={s.steps(p.linprobe_epochs, s.n_train)}",
             f"train.warmup_epochs={warmup_epochs(p.linprobe_epochs)}",
             f"eval.every_epochs={max(1, round(p.linprobe_epochs))}"],
            home / "linprobe", "results.json",
        ),
    }  # fmt: skip
    for frac, epochs, seeds in ((0.1, p.ft10_epochs, p.seeds), (1.0, p.ft100_epochs, p.seeds[:1])):
        n = n10 if frac < 1 else s.n_train
        batch = min(p.batch, max(2, n // 2 * 2))  # even (mixup pairs); tiny quick subsets
        for seed in seeds:
            run = home / f"finetune_{round(frac * 100)}pct_seed{seed}"
            jobs[f"ft{round(frac * 100)}_seed{seed}"] = Job(
                f"{m.name}_{run.name}",
                ["finetune", FINETUNE_CONFIG, *s.common(run), f"init.checkpoint={encoder}",
                 f"data.val_path={s.val}", f"data.label_fraction={frac}", f"seed={seed}",
                 f"finetune.layer_decay={ld}", f"train.warmup_epochs={warmup_epochs(epochs)}",
                 f"train.max_steps={max(1, round(epochs * (n // batch)))}",
                 f"eval.every_epochs={max(1, round(epochs))}", "run.ckpt_every=1000",
                 f"train.batch_size={batch}"],
                run, "results.json",
            )  # fmt: skip
    return jobs


def read_result(job: Job) -> dict[str, Any] | None:
    f = job.run_dir / job.done_file
    return json.loads(f.read_text()) if f.exists() else None


def pretrain_method(s: Study, m: Method, calib: dict[str, float]) -> dict[str, Any]:
    """Pre-train one arm for its step budget; its ``pretrain`` record (empty for scratch)."""
    if not m.objective:
        return {}
    rec = budget_steps(s, calib, m, s.tokenizer_steps)
    if m.tokenizer:
        run_job(tokenizer_job(s, m), s.threads, s.work / "logs")
    run = s.work / m.name / "pretrain"
    job = run_job(
        Job(f"{m.name}_pretrain", pretrain_argv(s, m, run, rec["steps"]), run,
            "enhancer.safetensors"),
        s.threads, s.work / "logs",
    )  # fmt: skip
    rec.update(
        wallclock_s=round(job.wallclock_s, 1),
        last=last_metrics(run),
        encoder_sha256=study_restore.tensors_sha256(run / "enhancer.safetensors"),
    )
    return rec


# Evaluations run in rounds across all arms, most informative first, and the table is rewritten
# after each round: a study stopped early still gives every arm the same evaluations.
EVAL_ROUNDS = ("ft10_seed0", "ft10_seed1", "linprobe", "knn", "ft10_seed2", "ft100_seed0")


def evaluate_round(s: Study, m: Method, key: str, rec: dict[str, Any]) -> None:
    """Run one evaluation (``key`` of :func:`eval_jobs`) of one arm into ``rec['eval']``."""
    if (rec["eval"].get(key) or {}).get("result") is not None:
        return  # kept from the published table (--restore)
    encoder = str(s.work / m.name / "pretrain") if m.objective else ""
    job = eval_jobs(s, m, encoder).get(key)
    if job is None:  # e.g. a seed the preset does not have
        return
    done = run_job(job, s.threads, s.work / "logs")
    rec["eval"][key] = {
        "result": read_result(done),
        "wallclock_s": round(done.wallclock_s, 1),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": git_commit(),  # of the table; a reused job may be older
    }


def override_value(argv: list[str] | tuple[str, ...], key: str) -> str:
    """The value a job's ``key=value`` overrides give ``key`` (the last one wins, as in
    ``cimpt``)."""
    return [a.split("=", 1)[1] for a in argv if a.startswith(f"{key}=")][-1]


def last_metrics(run: Path) -> dict[str, float]:
    """The last logged line of a pre-training run (losses, accuracies)."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return {k: v for k, v in json.loads(lines[-1]).items() if isinstance(v, (int, float))}


# ---- the table ------------------------------------------------------------------------------
def top1(entry: dict[str, Any] | None) -> float | None:
    """top-1 of a finetune/linprobe ``results.json`` (last evaluation)."""
    res = (entry or {}).get("result")
    return None if res is None else float(res["last"]["top1"])


def ft10(rec: dict[str, Any]) -> dict[int, float]:
    """seed -> 10 %-label top-1 of one method (finished runs only)."""
    out = {}
    for key, entry in rec["eval"].items():
        if key.startswith("ft10_seed") and top1(entry) is not None:
            out[int(key.removeprefix("ft10_seed"))] = top1(entry)
    return out  # type: ignore[return-value]


def paired(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, int] | None:
    """Mean and sample std of ``a[s] - b[s]`` over seeds both have, and their count."""
    diffs = [a[k] - b[k] for k in sorted(a.keys() & b.keys())]
    if not diffs:
        return None
    sd = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
    return statistics.mean(diffs), sd, len(diffs)


def _fmt(x: float | None, signed: bool = False) -> str:
    return "—" if x is None else (f"{x:+.2f}" if signed else f"{x:.2f}")


def _fmt_pair(p: tuple[float, float, int] | None) -> str:
    return "—" if p is None else f"{p[0]:+.2f} ± {p[1]:.2f} (n={p[2]})"


def table_row(rec: dict[str, Any], scratch: dict[str, Any]) -> str:
    pre = rec.get("pretrain") or {}
    gflops = rec.get("gflops_per_image") or {}
    knn = ((rec["eval"].get("knn") or {}).get("result") or {}).get("top1", {})
    seeds = ft10(rec)
    mean10 = statistics.mean(seeds.values()) if seeds else None
    t100, s100 = top1(rec["eval"].get("ft100_seed0")), top1(scratch["eval"].get("ft100_seed0"))
    gain100 = None if t100 is None or s100 is None else t100 - s100
    gain10 = None if rec is scratch else paired(seeds, ft10(scratch))
    return (
        f"| {rec['method']} | {pre.get('steps', 0)} | {pre.get('images_seen', 0)} | "
        f"{_fmt(pre.get('ms_per_image'))} | {_fmt(gflops.get('step'))} | "
        f"{pre.get('tokenizer_charge_s', 0):.0f} | "
        f"{pre.get('wallclock_s', 0) / 60:.1f} | {_fmt(knn.get('20'))} | {_fmt(knn.get('200'))} | "
        f"{_fmt(top1(rec['eval'].get('linprobe')))} | {_fmt(mean10)} | {_fmt_pair(gain10)} | "
        f"{_fmt(t100)} | {_fmt(gain100, True)} |"
    )


def markdown(records: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    by = {r["method"]: r for r in records}
    scratch = by["scratch"]
    lines = [
        f"CIFAR-10 (JPEG copy), preset {meta['preset']}, commit {meta['commit'][:7]}, "
        f"{meta['date']}; pre-training budget {meta['budget_s'] / 60:.0f} min per method "
        f"(tokenizer charged to BEiT and CIM); evaluations done: {meta['progress']}",
        "",
        "| method | pre-train steps | images seen | ms / image (calibrated) | GFLOP / image "
        "(step) | tokenizer charge (s) "
        "| pre-train wall (min, measured) | kNN@20 | kNN@200 | linear probe | 10 % top-1 "
        "(mean over seeds) | 10 % gain vs scratch (paired by seed, mean ± sd) | 100 % top-1 "
        "| 100 % gain |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *[table_row(r, scratch) for r in records],
    ]
    lines += ["", "Forward GFLOP per image by part (torch's FLOP counter):", ""]
    for r in records:
        parts = {
            k: v for k, v in (r.get("gflops_per_image") or {}).items() if k.startswith("forward")
        }
        if parts:
            lines.append(
                f"- {r['method']}: " + ", ".join(f"{k[8:]} {v:.3f}" for k, v in parts.items())
            )
    if "cim-revdet" in by and "cim-revdet-argmax" in by:
        claim4 = paired(ft10(by["cim-revdet"]), ft10(by["cim-revdet-argmax"]))
        lines += [
            "",
            f"Claim 4 (sampled minus argmax corruption, 10 % labels): {_fmt_pair(claim4)}",
        ]
    lines += study_restore.recreated_note(records)
    return "\n".join(lines + variant_lines(records)) + "\n"


def variant_lines(records: list[dict[str, Any]]) -> list[str]:
    """Each CIM-REVDET variant against CIM-REVDET itself: 10 % labels paired by seed, kNN."""
    by = {r["method"]: r for r in records}
    ref = by.get("cim-revdet")
    variants = [r for r in records if r.get("change") and r is not ref]
    if ref is None or not variants:
        return []
    lines = [
        "",
        "Each variant minus CIM-REVDET (same budget; 10 % labels paired by seed):",
        "",
        "| variant | change | overrides | 10 % top-1 difference | kNN@20 difference |",
        "|---|---|---|---:|---:|",
    ]
    knn_ref = ((ref["eval"].get("knn") or {}).get("result") or {}).get("top1", {}).get("20")
    for r in variants:
        knn = ((r["eval"].get("knn") or {}).get("result") or {}).get("top1", {}).get("20")
        d_knn = None if knn is None or knn_ref is None else knn - knn_ref
        lines.append(
            f"| {r['method']} | {r['change']} | `{' '.join(r.get('overrides', []))}` | "
            f"{_fmt_pair(paired(ft10(r), ft10(ref)))} | {_fmt(d_knn, True)} |"
        )
    return lines + corruption_lines([ref, *variants])


#: End-of-pre-training metrics of a CIM run (``metrics.jsonl``'s last line), as percentages.
CORRUPTION_KEYS = ("gen_acc", "replaced_masked", "revdet_acc", "revdet_prior_acc", "revdet_margin")


def corruption_lines(records: list[dict[str, Any]]) -> list[str]:
    """What each CIM arm trained on at its last logged step: the generator's masked-token
    accuracy, the share of masked tokens it replaced, and REVDET's accuracy against the mask's
    position-only baseline (issue 17: the margin target is 15 points)."""
    lines = [
        "",
        "End of pre-training (last logged step; percent):",
        "",
        "| arm | generator accuracy | replaced / masked | REVDET accuracy "
        "| position-only accuracy | REVDET margin (points) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        last = (r.get("pretrain") or {}).get("last") or {}
        cells = [_fmt(100 * last[k]) if k in last else "—" for k in CORRUPTION_KEYS]
        lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
    return lines


# ---- main -----------------------------------------------------------------------------------
def all_rounds(preset: Preset) -> list[str]:
    """Every evaluation round of the preset, in the order they run."""
    s = Study(Path(), Path(), Path(), preset, 1, 1)
    extra = sorted(set(eval_jobs(s, METHODS[0], "")) - set(EVAL_ROUNDS))
    return [*EVAL_ROUNDS, *extra]


def run_study(
    s: Study,
    methods: list[Method],
    report: Callable[[list[dict[str, Any]], str], None],
    rounds: list[str] | None = None,
    published: dict[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Calibrate, pre-train every arm, then run the evaluation ``rounds`` (default: all).

    ``published`` (method -> record of a published table, ``--restore``): each re-created
    encoder is checked against it, and the finished evaluations of scratch and of every arm
    whose encoder is the published one are kept (``study_restore.adopt_published``)."""
    calib = calibrate(s, methods)
    flops = count_flops(s, methods)
    est = s.preset.budget_s * sum(1 for m in methods if m.objective)  # each arm's budget
    print(f"[methods] calibration (s/step): {json.dumps(calib)}; pre-training ~{est / 60:.0f} min")
    # Every encoder first (the scarce part, and what other studies reuse), then evaluations.
    records: list[dict[str, Any]] = [
        {"method": m.name, "objective": m.objective, "change": m.change,
         "overrides": list(m.overrides), "pretrain": pretrain_method(s, m, calib)}
        for m in methods
    ]  # fmt: skip
    for rec in records:
        rec["gflops_per_image"] = flops.get(rec["method"])
        rec["eval"] = {}
    if published is not None:
        study_restore.adopt_published(records, published)
    keys = rounds or all_rounds(s.preset)
    for i, key in enumerate(keys):
        for rec, m in zip(records, methods, strict=True):
            evaluate_round(s, m, key, rec)
        report(records, f"{i + 1} of {len(keys)} evaluation rounds ({key})")
    return records


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="full")
    ap.add_argument("--data", default=str(CIFAR / "train"))
    ap.add_argument("--val-data", default=str(CIFAR / "test"))
    ap.add_argument("--work", default="runs/methods")
    ap.add_argument("--out", default="docs/results")
    ap.add_argument(
        "--methods",
        default=",".join(m.name for m in METHODS),
        help="arms, in the order each evaluation round runs them (scratch required); "
        "also the CIM-REVDET variants of issue 17: " + ",".join(m.name for m in VARIANTS),
    )
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="'NAME key=value ...'",
        help="one more CIM-REVDET arm with these overrides (e.g. a combination); "
        "list NAME in --methods",
    )
    ap.add_argument("--rounds", default="", help="evaluation rounds to run (default: all)")
    ap.add_argument("--table", default="cifar10_methods", help="name of the result files")
    ap.add_argument(
        "--restore",
        default="",
        metavar="TABLE.json",
        help="a published table to continue on a machine without its --work (empty): its "
        "budgets are reused, its evaluations kept, re-created encoders checked against it",
    )
    ap.add_argument(
        "--render",
        action="store_true",
        help="only rewrite <out>/<table>.md from <out>/<table>.json (after a change to the table)",
    )
    ap.add_argument("--in-process", action="store_true", help="no subprocesses (tests)")
    return ap.parse_args(argv)


def choose_arms(a: argparse.Namespace) -> list[Method]:
    """The ``--methods`` arms, in order, from the methods, the variants and ``--variant``."""
    known = {m.name: m for m in (*METHODS, *VARIANTS)}
    for spec in a.variant:
        m = parse_variant(spec)
        known[m.name] = m
    names = a.methods.split(",")
    unknown = sorted(set(names) - set(known))
    if unknown or "scratch" not in names:
        raise ValueError(f"--methods: unknown {unknown} or no scratch arm")
    return [known[n] for n in names]


def render(out: Path, table: str) -> int:
    """``--render``: the markdown of a written table, from its JSON (no jobs run)."""
    path = under_root(out) / f"{table}.json"
    try:
        payload = study_restore.load_published(path, option="--render")
        md = markdown(payload["methods"], payload["meta"])
    except ValueError as e:  # already names the option and the file
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyError as e:
        print(f"error: --render: {path} has no {e} (not a compare_methods table)", file=sys.stderr)
        return 2
    write_study(str(out), table, payload, md)
    return 0


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.render:
        return render(Path(a.out), a.table)
    try:
        methods = choose_arms(a)
        rounds = [r for r in a.rounds.split(",") if r]
        known = all_rounds(PRESETS[a.preset])
        if bad := sorted(set(rounds) - set(known)):
            raise ValueError(f"--rounds: unknown {bad}; the preset's are {', '.join(known)}")
        restored = study_restore.load_published(a.restore) if a.restore else None
        if restored and restored["meta"].get("preset") != a.preset:
            raise ValueError(f"--restore: {a.restore} is preset {restored['meta'].get('preset')}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not cifar_folders_exist(a):
        return 2
    s = study_from_args(a)
    t0 = time.time()
    published = study_restore.by_method(restored) if restored else None
    if published is not None:
        restore_calibration(s, methods, published, a.restore)

    def report(records: list[dict[str, Any]], progress: str) -> None:
        meta = {
            "preset": a.preset, "commit": git_commit(), "budget_s": s.preset.budget_s,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "study_wallclock_s": round(time.time() - t0, 1), "cpu_count": os.cpu_count(),
            "command": " ".join(sys.argv), "progress": progress,
        }  # fmt: skip
        if restored:
            meta["restored_from"] = {"file": a.restore, "meta": restored["meta"]}
        payload = {"meta": meta, "methods": records}
        write_study(a.out, a.table, payload, markdown(records, meta))
        print(f"[methods] table written after {progress}", flush=True)

    run_study(s, methods, report, rounds or None, published)  # in --methods order
    return 0


if __name__ == "__main__":
    sys.exit(main())
