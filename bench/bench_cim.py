"""CPU throughput and memory of one CIM pre-training step, its parts, and the real Trainer.

Fang et al., "Corrupted Image Modeling" (ICLR 2023, arXiv 2202.03382); docs/METHOD.md "One training
step". For one config (default ``configs/cifar10_vit.yaml``) on CPU, at the config's batch
size, in the precision ``train.amp`` resolves to (``auto``: bf16 on a CPU with AMX, else fp32;
pass ``train.amp=none`` or ``train.amp=bf16`` to choose), this measures in one run:

1. **Components**, all on the SAME batch tensors from the real data pipeline (JPEG folder,
   two-view transform, block masks, ``CIMCollate``), interleaved round-robin over ``--reps``
   repetitions (so machine noise hits every part alike), median of each:

   * tokenizer: ``golden_tokens(x_tok)`` + ``corrupt(z_hat)`` (encode, decode, resize,
     normalize), no gradient;
   * generator: ``generator_step`` forward + backward of its masked cross-entropy;
   * sample: the Gumbel sampling of the replacements (docs/METHOD.md step 5);
   * enhancer + head: the enhancer and the objective's head forward + backward of the
     objective's loss (``head.loss``) on a fixed corrupted image;
   * optimizer: the Trainer's ``optimizer_step`` (clip, AdamW over all trainable
     parameters, zero_grad) on fixed gradients;
   * the full CIM step: ``Trainer.train_step``, the step ``Trainer.fit`` runs (schedules,
     forward + backward under autocast, NaN guard, clip, AdamW);
   * diagnostic, not part of the sum: the full step with
     ``torch.utils.deterministic.fill_uninitialized_memory`` off (the engine now turns it off
     itself, so the two should agree; the row guards against a regression);
   * a plain supervised step of the same enhancer backbone (timm model, 10-class head,
     cross-entropy on labels, clip, AdamW with the same parameter groups): the cost of a
     fine-tuning step, in the same precision.

   glue = full / (tokenizer + generator + sample + enhancer + optimizer); target <= 1.05.
   Every part also gets its FLOPs per image (torch's FLOP counter) and its share of the
   matmul peak in the dtype it computes in (MFU); the peak is a 2048^3 product timed in the
   same rounds (fp32, and bf16 where the CPU has AMX; emulated bf16 is no ceiling).

2. **End to end**: the real ``Trainer`` on the config for ``--warmup`` + ``--steps`` steps
   (CIFAR images, ``data.num_workers`` from the config), in a fresh child process; img/s and
   the data-wait share come from its ``metrics.jsonl`` (logged every step, warm-up dropped).
   Target: data wait <= 5 % of step time.

3. **Peak RSS** (``ru_maxrss``) of that child, i.e. of a pre-training process at the default
   batch, plus the largest of its DataLoader workers.

The tokenizer is a randomly initialised VQ-VAE of the config's tokenizer architecture unless
``--tokenizer`` names a ``tokenizer.safetensors``: throughput does not depend on the weights.
If glue > 1.05 (or ``--profile always``), a few full steps and a few rounds of the parts run
under ``torch.profiler``; the full step's top operators by self CPU time are printed and saved,
each beside its time and call count in the sum of the parts (where the glue goes).

Usage:
    python bench/bench_cim.py [--config configs/cifar10_vit.yaml] [--steps 30] [--warmup 5]
        [--reps 5] [--data DIR] [--tokenizer FILE] [--out FILE] [key=value ...]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import math
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from cimpt.config import load_config
from cimpt.data import build_loader
from cimpt.engine.loop import Trainer
from cimpt.engine.optim import build_adamw
from cimpt.engine.precision import autocast, choose_attention, cpu_bf16_units, describe
from cimpt.errors import CimptError
from cimpt.pretrain import CIMTask, build_cim_task, load_frozen_tokenizer
from cimpt.tokenizers.base import ImageTokenizer
from cimpt.tokenizers.load import build_tokenizer
from compute import step_flops
from records import git, git_commit, write_record

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = "configs/cifar10_vit.yaml"
DEFAULT_DATA = "~/.cache/cimpt/data/CIFAR-10-images/train"
DEFAULT_OUT = "bench/results/cim_throughput.json"
GLUE_TARGET = 1.05
DATA_WAIT_TARGET = 0.05
# The parts whose sum a full step should not exceed by more than the glue target.
SUM_PARTS = ("tokenizer", "generator", "sample", "enhancer", "optimizer")
# Side of the matmul whose rate is the ceiling (MFU); timed inside the round-robin.
PEAK_N = 2048
# Settings for the benchmark's own Trainer runs: no checkpoints or figures mid-run, no
# progress bar, no TensorBoard, and every step logged so the warm-up can be dropped.
QUIET = (
    "run.tensorboard=false",
    "run.progress=false",
    "run.ckpt_every=1000000000",
    "run.vis_every=1000000000",
)


# ---- config and parts of the pipeline -------------------------------------------------------
def build_config(
    args: argparse.Namespace, run_dir: Path, extra: tuple[str, ...] = ()
) -> DictConfig:
    """The config file, then ``data.path``, the benchmark's quiet settings, user overrides."""
    overrides = [
        f"data.path={os.path.expanduser(args.data)}",
        f"run.dir={run_dir}",
        *QUIET,
        *extra,
        *args.overrides,
    ]
    if args.tokenizer:
        overrides.append(f"tokenizer.checkpoint={args.tokenizer}")
    return load_config(
        ROOT / args.config if not Path(args.config).is_absolute() else args.config, overrides
    )


def make_tokenizer(cfg: DictConfig, path: str) -> tuple[ImageTokenizer, str]:
    """The frozen tokenizer and a line saying where its weights came from."""
    if path:
        return load_frozen_tokenizer(cfg), f"loaded from {path}"
    torch.manual_seed(int(cfg.seed))
    cfg.tokenizer.checkpoint = ""
    tok = build_tokenizer(cfg.tokenizer).freeze()
    return tok, (
        "randomly initialised VQ-VAE of the config's tokenizer architecture "
        "(throughput does not depend on the weights)"
    )


def first_batch(task: CIMTask, batch_size: int, seed: int) -> dict[str, Any]:
    """One batch through the real pipeline (dataset, two views, masks, collate), in-process."""
    loader = build_loader(task.dataset, batch_size, 0, task.collate, seed=seed)
    return next(iter(loader))


# ---- round-robin timing ----------------------------------------------------------------------
@dataclass
class Part:
    """A timed callable and an untimed set-up run before each call."""

    run: Callable[[], object]
    setup: Callable[[], object] = lambda: None
    times: list[float] = field(default_factory=list)


def time_round_robin(parts: dict[str, Part], reps: int, warmup: int) -> None:
    """Call every part once per round, ``warmup`` unrecorded rounds then ``reps`` recorded."""
    for rnd in range(warmup + reps):
        for part in parts.values():
            part.setup()
            t0 = time.perf_counter()
            part.run()
            dt = time.perf_counter() - t0
            if rnd >= warmup:
                part.times.append(dt)


def _stats(times: list[float], batch: int) -> dict[str, float]:
    med = statistics.median(times)
    return {
        "median_ms": 1e3 * med,
        "min_ms": 1e3 * min(times),
        "max_ms": 1e3 * max(times),
        "img_per_s": batch / med,
        "n": len(times),
    }


# ---- the CIM parts -----------------------------------------------------------------------------
def cim_parts(trainer: Trainer, batch: dict[str, Any]) -> dict[str, Part]:
    """The stage parts, the optimizer step and the Trainer's full step on ``batch``.

    Every part starts with no gradients (``zero_grad(set_to_none=True)``), as a Trainer step
    does, so each backward allocates its gradients like the full step's backward.
    """
    model, b = trainer.model, trainer.to_device(batch)
    model.train()
    with torch.no_grad(), autocast(trainer.device, trainer.amp_dtype):
        stages = model._pipeline(b)  # the tensors every part starts from
    x, x_tok, mask = b["x"], b["x_tok"], stages.mask
    z, logits, z_hat, x_cor = stages.z, stages.logits, stages.z_hat, stages.x_cor
    grads = _fixed_gradients(trainer, b)

    def clear() -> None:
        model.zero_grad(set_to_none=True)

    def amp() -> contextlib.AbstractContextManager:
        return autocast(trainer.device, trainer.amp_dtype)  # as the full step runs

    def tokenizer() -> None:
        with torch.no_grad(), amp():
            model.golden_tokens(x_tok)
            model.corrupt(z_hat)

    def generator() -> None:
        with amp():
            _, loss, _ = model.generator_step(x, mask, z)
        loss.backward()

    def enhancer() -> None:
        with amp():
            out = model.head(model.enhancer.features(x_cor))
            loss, _ = model.head.loss(replace(stages, out=out))
        (model.enh_weight * loss).backward()

    def set_grads() -> None:
        for p, g in grads:
            p.grad = g.clone()

    def optimizer() -> None:
        trainer.optimizer_step(True, False)

    def full() -> None:
        # One optimizer step exactly as Trainer.fit runs it, minus the data fetch (timed end
        # to end below) and the logging bookkeeping.
        trainer.train_step(lambda: batch)

    def full_without_fill() -> None:
        # Diagnostic: train.deterministic=true makes torch fill every new tensor with NaN
        # (torch.utils.deterministic.fill_uninitialized_memory); this is the step without it.
        det = torch.utils.deterministic
        previous = det.fill_uninitialized_memory
        det.fill_uninitialized_memory = False  # type: ignore[attr-defined]
        try:
            full()
        finally:
            det.fill_uninitialized_memory = previous  # type: ignore[attr-defined]

    return {
        "tokenizer": Part(tokenizer),
        "generator": Part(generator, clear),
        "enhancer": Part(enhancer, clear),
        "optimizer": Part(optimizer, set_grads),
        "full": Part(full, clear),
        "sample": Part(lambda: model.sample(logits, z, mask)),
        "full_no_fill": Part(full_without_fill, clear),
    }


def matmul_part(dtype: str, n: int) -> Part:
    """One ``n x n @ n x n`` product in ``dtype``: the ceiling the parts' MFU is read against."""
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
    return Part(lambda: a @ b)


def _fixed_gradients(trainer: Trainer, batch: dict[str, Any]) -> list[tuple[Any, torch.Tensor]]:
    """Gradients of one real step, copied, so the optimizer part sees every parameter's grad."""
    trainer.model.zero_grad(set_to_none=True)
    trainer.forward_backward(batch, sync=True)
    grads = [
        (p, p.grad.detach().clone())
        for p in trainer.model.parameters()
        if p.requires_grad and p.grad is not None
    ]
    trainer.model.zero_grad(set_to_none=True)
    return grads


def supervised_part(cfg: DictConfig, batch: dict[str, Any], dtype: torch.dtype | None) -> Part:
    """A plain supervised step (fine-tuning's cost) of the same timm backbone with a 10-class
    head, in the run's precision (``dtype``: the autocast dtype, None for fp32)."""
    e = cfg.enhancer
    kwargs = OmegaConf.to_container(e.kwargs, resolve=True) if e.kwargs else {}
    net = timm.create_model(
        str(e.name),
        pretrained=False,
        num_classes=10,
        img_size=int(cfg.data.img_size),
        patch_size=int(e.patch_size),
        drop_path_rate=float(e.drop_path),
        **dict(kwargs),
    )  # type: ignore[arg-type]
    net.train()
    cpu = torch.device("cpu")
    choose_attention(net, cpu, dtype)  # as the engine does
    opt = build_adamw(net, 1e-3, float(cfg.train.weight_decay), tuple(cfg.train.betas))
    clip = float(cfg.train.clip_grad) if cfg.train.clip_grad > 0 else math.inf
    x, labels = batch["x"], batch["label"] % 10

    def step() -> None:
        with autocast(cpu, dtype):
            loss = F.cross_entropy(net(x), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return Part(step)


def measure_components(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    cfg = build_config(args, work / "components")
    tok, tok_note = make_tokenizer(cfg, args.tokenizer)
    task = build_cim_task(cfg, tok)
    trainer = Trainer(task, cfg)  # builds model, optimizer and loader exactly as pretrain does
    batch = first_batch(task, trainer.micro, int(cfg.seed))
    n = int(batch["x"].shape[0])
    parts = cim_parts(trainer, batch)
    parts["supervised"] = supervised_part(cfg, batch, trainer.amp_dtype)
    # The ceilings, timed in the same rounds as the parts so that noise hits them alike:
    # bf16 only where the CPU has matrix units (emulated bf16 is no ceiling worth a minute).
    dtypes = ("fp32", "bf16") if cpu_bf16_units() else ("fp32",)
    for d in dtypes:
        parts[f"peak_{d}"] = matmul_part(d, PEAK_N)
    time_round_robin(parts, args.reps, args.rep_warmup)
    stats = {name: _stats(p.times, n) for name, p in parts.items()}
    peaks = {
        f"{d}_tflops": 2 * PEAK_N**3 / (stats.pop(f"peak_{d}")["median_ms"] / 1e3) / 1e12
        for d in dtypes
    }
    dtype = "bf16" if trainer.amp_dtype == torch.bfloat16 else "fp32"
    peak = peaks[f"{dtype}_tflops"]
    for name in (*SUM_PARTS, "full", "supervised"):
        part = parts[name]
        part.setup()
        flops = step_flops(part.run) / n
        stats[name]["gflops_per_image"] = flops / 1e9
        stats[name]["mfu"] = stats[name]["img_per_s"] * flops / 1e12 / peak
    sum_ms = sum(stats[k]["median_ms"] for k in SUM_PARTS)
    full_ms = stats["full"]["median_ms"]
    result: dict[str, Any] = {
        "batch_size": n,
        "precision": describe(trainer.amp_dtype, trainer.device),
        "matmul_peak_tflops": peaks,
        "mfu_peak": f"{dtype} matmul peak, {peak:.3f} TFLOP/s (measured in this run)",
        "tokenizer_weights": tok_note,
        "parts": stats,
        "sum_of_parts_ms": sum_ms,
        "glue": full_ms / sum_ms,
        "glue_ms": full_ms - sum_ms,
        "share_of_full": {k: stats[k]["median_ms"] / full_ms for k in (*SUM_PARTS, "full_no_fill")},
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "fill_uninitialized_memory": bool(torch.utils.deterministic.fill_uninitialized_memory),
        "cim_over_supervised": full_ms / stats["supervised"]["median_ms"],
        "params_trainable": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "params_tokenizer": sum(p.numel() for p in tok.parameters()),
    }
    trainer.close()  # no fit: release the run directory ourselves
    want = args.profile == "always" or (args.profile == "auto" and result["glue"] > GLUE_TARGET)
    if want:
        result["profile_full_step"] = profile_glue(parts, steps=3)
    trainer.logger.close()
    return result


def profile_ops(parts: list[Part], steps: int) -> dict[str, tuple[float, float]]:
    """Operator -> (self CPU ms, calls) per round, over ``steps`` rounds that each run
    ``parts`` in turn (torch.profiler)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            for part in parts:
                part.setup()
                part.run()
    return {e.key: (e.self_cpu_time_total / 1e3 / steps, e.count / steps)
            for e in prof.key_averages()}  # fmt: skip


def profile_glue(parts: dict[str, Part], steps: int, top: int = 15) -> list[dict[str, Any]]:
    """Top operators of the full step by self CPU time, each beside its time and calls in the
    sum of the parts: extra operators or calls in the full step are work the parts miss; the
    same calls, each slower, are the cost of running the parts together."""
    full = profile_ops([parts["full"]], steps)
    summed = profile_ops([parts[k] for k in SUM_PARTS], steps)
    ranked = sorted(full.items(), key=lambda kv: kv[1][0], reverse=True)[:top]
    return [
        {
            "op": op,
            "self_ms_per_step": ms,
            "calls_per_step": calls,
            "parts_self_ms_per_step": summed.get(op, (0.0, 0.0))[0],
            "parts_calls_per_step": summed.get(op, (0.0, 0.0))[1],
        }
        for op, (ms, calls) in ranked
    ]


# ---- end to end, in a child process -----------------------------------------------------------
def run_e2e(args: argparse.Namespace, out_file: Path) -> None:
    """Child: the real Trainer for warmup + steps steps; writes throughput and memory."""
    with tempfile.TemporaryDirectory(prefix="cim_e2e_") as tmp:
        run_dir = Path(tmp) / "run"
        total = args.warmup + args.steps
        cfg = build_config(args, run_dir, (f"train.max_steps={total}", "run.log_every=1"))
        tok, _ = make_tokenizer(cfg, args.tokenizer)
        trainer = Trainer(build_cim_task(cfg, tok), cfg)
        t0 = time.perf_counter()
        trainer.fit()
        wall = time.perf_counter() - t0
        rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        workers = int(cfg.data.num_workers)
        batch = int(cfg.train.batch_size)
        del trainer
        gc.collect()  # shuts the persistent DataLoader workers down so their rusage is counted
    rss_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result = summarize_metrics(records, args.warmup, batch)
    result.update(
        {
            "steps": args.steps,
            "warmup": args.warmup,
            "num_workers": workers,
            "fit_wall_s": wall,
            "peak_rss_mb": rss_self,
            "peak_rss_worker_mb": rss_children if workers > 0 else None,
        }
    )
    out_file.write_text(json.dumps(result))


def summarize_metrics(records: list[dict[str, Any]], warmup: int, batch: int) -> dict[str, Any]:
    """Aggregate per-step records (log_every=1) after the warm-up into totals.

    Each record covers one step: its wall time is ``images / img_per_s`` and its data wait is
    ``data_wait_frac`` of that, so totals are sums over steps, not means of ratios.
    """
    steps = [r for r in records if "img_per_s" in r and r["step"] > warmup]
    if not steps:
        raise CimptError("end-to-end run logged no steps after the warm-up; raise --steps")
    secs = [batch / r["img_per_s"] for r in steps]
    wait = sum(r["data_wait_frac"] * s for r, s in zip(steps, secs, strict=True))
    return {
        "img_per_s": batch * len(steps) / sum(secs),
        "step_ms_median": 1e3 * statistics.median(secs),
        "data_wait_frac": wait / sum(secs),
        "data_wait_ms_median": 1e3
        * statistics.median(r["data_wait_frac"] * s for r, s in zip(steps, secs, strict=True)),
        "peak_mem_mb_logged": max(r.get("peak_mem_mb", 0.0) for r in steps),
        "measured_steps": len(steps),
    }


def e2e_in_child(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Run ``run_e2e`` in a fresh interpreter so its peak RSS is that of a pre-training run."""
    out = work / "e2e.json"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--config",
        args.config,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--data",
        args.data,
        "--tokenizer",
        args.tokenizer,
        "--e2e-child",
        str(out),
        *args.overrides,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise CimptError(f"the end-to-end child run failed: {tail}")
    return json.loads(out.read_text())


# ---- report -------------------------------------------------------------------------------
def _busiest_processes(n: int = 4) -> list[str]:
    """Top CPU users (name and %CPU) so a concurrent job is on record."""
    try:
        out = subprocess.run(
            ["ps", "-eo", "pcpu,comm", "--sort=-pcpu", "--no-headers"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [" ".join(line.split()) for line in out.splitlines()[:n]]


def machine_info() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor(),
    }


def _row(
    name: str, ms: float | None, ips: float | None, note: str, part: dict[str, Any] | None = None
) -> str:
    ms_s = f"{ms:.1f}" if ms is not None else ""
    ips_s = f"{ips:.1f}" if ips is not None else ""
    gf = f"{part['gflops_per_image']:.3f}" if part and "gflops_per_image" in part else ""
    mfu = f"{100 * part['mfu']:.1f} %" if part and "mfu" in part else ""
    return f"| {name} | {ms_s} | {ips_s} | {gf} | {mfu} | {note} |"


def markdown_table(res: dict[str, Any]) -> str:
    c, e = res["components"], res["end_to_end"]
    p, share = c["parts"], c["share_of_full"]
    labels = {
        "tokenizer": "tokenizer encode + decode (no grad)",
        "generator": "generator fwd + bwd (masked CE)",
        "sample": "Gumbel sampling of the replacements (no grad)",
        "enhancer": f"enhancer + head fwd + bwd ({res['objective']})",
        "optimizer": "optimizer step (clip + AdamW + zero_grad)",
    }
    lines = [
        "| measurement | ms / step | img/s | GFLOP / img | MFU | note |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for k in SUM_PARTS:
        lines.append(
            _row(
                labels[k],
                p[k]["median_ms"],
                p[k]["img_per_s"],
                f"{100 * share[k]:.1f} % of full step",
                p[k],
            )
        )
    lines.append(
        _row("sum of parts", c["sum_of_parts_ms"], c["batch_size"] * 1e3 / c["sum_of_parts_ms"], "")
    )
    peaks = ", ".join(f"{k[:4]} {1e3 * v:.0f} GFLOP/s" for k, v in c["matmul_peak_tflops"].items())
    lines.append(f"| matmul peak ({PEAK_N}^3, same rounds) | | | | | {peaks} |")
    ok = "ok" if c["glue"] <= GLUE_TARGET else "OVER TARGET"
    lines.append(
        _row(
            "**full CIM step** (Trainer step functions)",
            p["full"]["median_ms"],
            p["full"]["img_per_s"],
            f"glue = full / sum = {c['glue']:.3f} (target <= {GLUE_TARGET}: {ok})",
            p["full"],
        )
    )
    lines.append(
        _row(
            "full step without NaN-filling of new tensors (diagnostic)",
            p["full_no_fill"]["median_ms"],
            p["full_no_fill"]["img_per_s"],
            f"{100 * share['full_no_fill']:.1f} % of full (train.deterministic "
            f"fills: {c['fill_uninitialized_memory']})",
        )
    )
    lines.append(
        _row(
            "supervised step, same backbone (10 classes)",
            p["supervised"]["median_ms"],
            p["supervised"]["img_per_s"],
            f"CIM step = {c['cim_over_supervised']:.2f} x supervised",
            p["supervised"],
        )
    )
    ok = "ok" if e["data_wait_frac"] <= DATA_WAIT_TARGET else "OVER TARGET"
    lines.append(
        _row(
            f"**end to end** Trainer.fit, {e['measured_steps']} steps, "
            f"{e['num_workers']} worker(s)",
            e["step_ms_median"],
            e["img_per_s"],
            f"data wait {100 * e['data_wait_frac']:.2f} % (target <= 5 %: {ok})",
        )
    )
    worker = e.get("peak_rss_worker_mb")
    wnote = f"; largest DataLoader worker {worker:.0f} MB" if worker else ""
    lines.append(
        f"| peak RSS, batch {c['batch_size']} | | | | | {e['peak_rss_mb']:.0f} MB main process"
        f"{wnote} |"
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--steps", type=int, default=30, help="end-to-end steps measured")
    parser.add_argument("--warmup", type=int, default=5, help="end-to-end steps dropped")
    parser.add_argument("--reps", type=int, default=5, help="round-robin rounds measured")
    parser.add_argument("--rep-warmup", type=int, default=1, help="round-robin rounds dropped")
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument(
        "--tokenizer",
        default="",
        help="tokenizer.safetensors; default: a random VQ-VAE of the config's",
    )
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--profile", choices=("auto", "always", "never"), default="auto")
    parser.add_argument("--e2e-child", default="", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = parser.parse_args(argv)
    if min(args.steps, args.reps) < 1 or min(args.warmup, args.rep_warmup) < 0:
        parser.error("--steps and --reps must be >= 1, --warmup and --rep-warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not os.path.isdir(os.path.expanduser(args.data)):
        print(f"error: --data: image folder not found at {args.data}", file=sys.stderr)
        return 2
    try:
        if args.e2e_child:
            run_e2e(args, Path(args.e2e_child))
            return 0
        return run_benchmark(args, argv if argv is not None else sys.argv[1:])
    except CimptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run_benchmark(args: argparse.Namespace, argv: list[str]) -> int:
    started = datetime.datetime.now(datetime.timezone.utc)
    load_start = os.getloadavg()
    busy_start = _busiest_processes()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cim_bench_") as tmp:
        work = Path(tmp)
        e2e = e2e_in_child(args, work)
        components = measure_components(args, work)
        cfg = build_config(args, work / "cfg")
    res: dict[str, Any] = {
        "benchmark": "cim_throughput",
        "config": args.config,
        "overrides": args.overrides,
        "objective": str(cfg.objective),
        "enhancer": f"{cfg.enhancer.name} {OmegaConf.to_container(cfg.enhancer.kwargs)}",
        "precision": components["precision"],
        "matmul_peak_tflops": components["matmul_peak_tflops"],
        "data": os.path.expanduser(args.data),
        "components": components,
        "end_to_end": e2e,
        "targets": {"glue_max": GLUE_TARGET, "data_wait_frac_max": DATA_WAIT_TARGET},
        "meets_targets": {
            "glue": components["glue"] <= GLUE_TARGET,
            "data_wait": e2e["data_wait_frac"] <= DATA_WAIT_TARGET,
        },
        "machine": machine_info(),
        "load_avg_start": list(load_start),
        "load_avg_end": list(os.getloadavg()),
        "busiest_processes_start": busy_start,
        "busiest_processes_end": _busiest_processes(),
        "date_utc": started.isoformat(timespec="seconds"),
        "wall_s": time.perf_counter() - t0,
        "git_commit": git_commit(),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "command": shlex.join(["python", "bench/bench_cim.py", *argv]),
    }
    print(markdown_table(res))
    print(
        f"load average start {load_start[0]:.2f}, end {res['load_avg_end'][0]:.2f} "
        f"(2-core machine; another job may be running); wall {res['wall_s']:.0f} s"
    )
    if "profile_full_step" in components:
        print("\ntop operators of the full step by self CPU time, against the sum of parts:")
        for row in components["profile_full_step"]:
            ms, calls = row["self_ms_per_step"], row["calls_per_step"]
            pms, pcalls = row["parts_self_ms_per_step"], row["parts_calls_per_step"]
            parts = f"(parts {pms:8.1f} ms x{pcalls:<5.0f})"
            print(f"  {ms:8.1f} ms x{calls:<5.0f} {parts} {row['op']}")
    write_record(res, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
