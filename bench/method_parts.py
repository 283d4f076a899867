"""Milliseconds per image of each part of one pre-training step, for every arm of the method
comparison (issue 11: "the per-method cost of one step, ms per image for each part").

For each method of bench/compare_methods.py, the job's own config (``pretrain_argv``: the
preset's ViT, batch and the method's overrides, a randomly initialized tokenizer of the study's
architecture, since cost does not depend on weights) builds the real Trainer and one batch of
the real pipeline. The step is cut at its module boundaries and each piece is timed forward +
backward on that batch:

- MAE (He et al. 2022): encoder (masking gather + ViT on the visible quarter), decoder + loss;
- SimMIM (Xie et al. 2022), BEiT (Bao et al. 2022): tokenizer (BEiT; no gradient), encoder on
  the masked input ([MASK] embedding included), head + loss;
- CIM (Fang et al. 2023): tokenizer, generator, sampling, enhancer + head + loss
  (``bench_cim.cim_parts``);
- every method: the optimizer (clip, AdamW, zero_grad) and the whole ``Trainer.train_step``.

A downstream piece starts from the upstream output detached with ``requires_grad`` (its
backward computes the gradient it hands upstream, as in the real step); an upstream piece runs
its backward with exactly that gradient, so the pieces together do the full step's arithmetic
(a test checks their parameter gradients equal one full forward-backward's). All parts of all
methods run round-robin in one process, so other load hits them alike; the median of the
rounds is kept. ``glue = full / sum of parts`` is what the parts miss (data move, schedules,
bookkeeping).

    python bench/method_parts.py [--preset full] [--data DIR] [--reps 7]
        [--methods mae,simmim,...] [--out bench/results/method_parts.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import compare_methods as cm
from bench_cim import Part, _fixed_gradients, cim_parts, time_round_robin
from cimpt.baselines.beit import BEiT
from cimpt.baselines.mae import MAE
from cimpt.baselines.simmim import SimMIM
from cimpt.engine.loop import Trainer
from cimpt.engine.precision import autocast
from cimpt.losses import mlm_loss
from cimpt.pretrain import build_cim_task
from records import git_commit


def split_parts(
    trainer: Trainer,
    encode: Callable[[], torch.Tensor],
    head: Callable[[torch.Tensor], torch.Tensor],
) -> dict[str, Part]:
    """ "encoder" (``encode()`` forward, then backward with the gradient the head hands it)
    and "head + loss" (``head(features)`` -> loss, forward + backward)."""
    model = trainer.model

    def amp() -> contextlib.AbstractContextManager:
        return autocast(trainer.device, trainer.amp_dtype)  # as the full step runs

    with amp():
        feats = encode().detach().requires_grad_(True)
        head(feats).backward()
    upstream = feats.grad
    assert upstream is not None

    def clear() -> None:
        model.zero_grad(set_to_none=True)
        feats.grad = None

    clear()  # the set-up's backward left gradients in the head

    def encoder() -> None:
        with amp():
            out = encode()
        out.backward(upstream)

    def head_part() -> None:
        with amp():
            loss = head(feats)
        loss.backward()

    return {"encoder": Part(encoder, clear), "head + loss": Part(head_part, clear)}


def baseline_parts(trainer: Trainer, batch: dict[str, Any]) -> dict[str, Part]:
    """The pieces of an MAE, SimMIM or BEiT step (module doc), before optimizer and full."""
    model, b = trainer.model, trainer.to_device(batch)
    model.train()
    x, mask = b["x"], b["mask"].bool()
    if isinstance(model, MAE):
        restore = model.encode_visible(x, mask)[1]
        return split_parts(
            trainer,
            lambda: model.encode_visible(x, mask)[0],
            lambda f: model.loss(model.decoder(f, restore), x, mask),
        )
    if not isinstance(model, SimMIM | BEiT):
        raise TypeError(f"no parts for {type(model).__name__}")

    def features() -> torch.Tensor:
        return model.mask_embed.features(model.enhancer, x, mask)

    if isinstance(model, SimMIM):
        return split_parts(trainer, features, lambda f: model.loss(model.head(f), x, mask))
    with torch.no_grad():
        z = model.golden_tokens(b["x_tok"])

    def tokenizer() -> None:
        with torch.no_grad(), autocast(trainer.device, trainer.amp_dtype):
            model.golden_tokens(b["x_tok"])

    parts = {"tokenizer": Part(tokenizer)}
    parts.update(split_parts(trainer, features, lambda f: mlm_loss(model.head(f), z, mask)[0]))
    return parts


def method_parts(trainer: Trainer, batch: dict[str, Any]) -> dict[str, Part]:
    """Every timed part of one method's step; "optimizer" and "full" last."""
    if isinstance(trainer.model, MAE | SimMIM | BEiT):
        parts = baseline_parts(trainer, batch)
    else:  # CIM
        cim = cim_parts(trainer, batch)  # its "full_no_fill" is a diagnostic, not a part
        parts = {k: cim[k] for k in ("tokenizer", "generator", "sample")}
        parts["enhancer + head + loss"] = cim["enhancer"]
    grads = _fixed_gradients(trainer, batch)

    def set_grads() -> None:
        for p, g in grads:
            p.grad = g.clone()

    parts["optimizer"] = Part(lambda: trainer.optimizer_step(True, False), set_grads)
    parts["full"] = Part(
        lambda: trainer.train_step(lambda: batch), lambda: trainer.model.zero_grad(set_to_none=True)
    )
    return parts


def build_trainers(s: cm.Study, methods: list[cm.Method], work: Path) -> dict[str, Any]:
    """``{method: (trainer, batch)}`` from each job's own config (``cm.pretrain_argv``)."""
    tok = cm.random_tokenizer(s, work)
    out = {}
    for m in methods:
        argv = [*cm.pretrain_argv(s, m, work / m.name, 1), f"tokenizer.checkpoint={tok}"]
        trainer, loader = cm.job_trainer(argv, build_cim_task)
        out[m.name] = (trainer, next(iter(loader)))
    return out


def summarize(parts: dict[str, Part], batch: int) -> dict[str, Any]:
    """Median ms per step and per image of each part, their sum and the glue."""
    ms = {k: 1e3 * statistics.median(p.times) for k, p in parts.items()}
    pieces = [k for k in ms if k != "full"]
    total = sum(ms[k] for k in pieces)
    return {
        "ms_per_step": ms,
        "ms_per_image": {k: v / batch for k, v in ms.items()},
        "share_of_full": {k: ms[k] / ms["full"] for k in pieces},
        "sum_of_parts_ms": total,
        "glue": ms["full"] / total,
        "rounds": len(parts["full"].times),
    }


def markdown(results: dict[str, Any]) -> str:
    """One row per (method, part): ms per step, ms per image, share of the full step."""
    lines = [
        "| method | part | ms / step | ms / image | share of full step |",
        "|---|---|---:|---:|---:|",
    ]
    for name, r in results.items():
        for part, v in r["ms_per_step"].items():
            if part == "full":
                continue
            share = f"{100 * r['share_of_full'][part]:.1f} %"
            lines.append(
                f"| {name} | {part} | {v:,.1f} | {r['ms_per_image'][part]:.2f} | {share} |"
            )
        full = r["ms_per_step"]["full"]
        lines.append(
            f"| **{name}** | **full step** | {full:,.1f} | **{r['ms_per_image']['full']:.2f}** "
            f"| glue {r['glue']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(cm.PRESETS), default="full")
    ap.add_argument("--data", default=str(cm.CIFAR / "train"))
    ap.add_argument("--reps", type=int, default=7, help="timed round-robin rounds")
    ap.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    ap.add_argument(
        "--methods", default=",".join(m.name for m in cm.METHODS if m.objective), help="arms"
    )
    ap.add_argument("--out", default="bench/results/method_parts.json")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    by_name = {m.name: m for m in cm.METHODS if m.objective}
    names = a.methods.split(",")
    if unknown := sorted(set(names) - set(by_name)):
        print(f"error: --methods: unknown or untrained arm(s) {unknown}", file=sys.stderr)
        return 2
    data = Path(a.data).expanduser()
    if not data.is_dir():
        print(f"error: --data: no image folder at {data}", file=sys.stderr)
        return 2
    torch.set_num_threads(os.cpu_count() or 1)
    s = cm.Study(data, data, Path("."), cm.PRESETS[a.preset], 0, os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        built = build_trainers(s, [by_name[n] for n in names], Path(tmp))
        parts = {n: method_parts(t, b) for n, (t, b) in built.items()}
        flat = {f"{n}/{k}": p for n, ps in parts.items() for k, p in ps.items()}
        time_round_robin(flat, a.reps, a.warmup)  # every part of every method, in turn
        results = {n: summarize(ps, int(built[n][1]["x"].shape[0])) for n, ps in parts.items()}
        for trainer, _ in built.values():
            trainer.close()
            trainer.logger.close()
    record = {
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "threads": torch.get_num_threads(),
        "loadavg_after": os.getloadavg(),
        "preset": a.preset,
        "methods": results,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
