"""fp32 against bf16 autocast on a CPU: the CIM step and a fine-tuning step, over ViT widths.

For the CIFAR ViT config (``configs/cifar10_vit.yaml``: 32 px, patch 4, depth 6, generator
depth 2, VQ-VAE tokenizer with random weights) at enhancer widths 192, 384 and 768, this times
in one process, interleaved round-robin so machine noise hits every variant alike:

* the CIM step exactly as ``cimpt pretrain`` runs it (``Trainer.train_step`` on a fixed batch
  of bundled photographs), with ``train.amp=none`` and ``train.amp=bf16`` (the tokenizer stays
  in fp32 in both, its default);
* a fine-tuning step of the same backbone (timm model, 10 classes, cross-entropy, clip, fused
  AdamW), fp32 and bf16 autocast;

and reports img/s, the bf16/fp32 speed-up, FLOPs per image (torch's FLOP counter) and the
share of the matmul peak each reaches, the peak measured in the same run for each dtype.

bf16 pays only on CPUs with native bf16 matrix instructions (Intel AMX, AVX512-BF16); elsewhere
oneDNN emulates it and it is many times slower, so there the bf16 rows are skipped unless
``--force-bf16``.

Usage:
    python bench/cpu_precision.py [--threads 2] [--widths 192 384 768] [--reps 5]
        [--batch 128] [--out bench/results/cpu_precision.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F

from cimpt.config import load_config
from cimpt.engine.loop import Trainer
from cimpt.engine.optim import build_adamw
from cimpt.engine.precision import choose_attention, cpu_bf16_units
from cimpt.pretrain import build_cim_task
from cimpt.tokenizers.load import build_tokenizer
from compute import matmul_peak, step_flops
from gpu_check import machine
from records import git_commit

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "src" / "cimpt" / "configs" / "cifar10_vit.yaml"
AMPS = {"fp32": "none", "bf16": "bf16"}


def cim_trainer(
    width: int, amp: str, batch: int, run_dir: Path, depth: int, compile_: bool = False
) -> Trainer:
    heads = max(1, width // 64)
    cfg = load_config(
        CONFIG,
        [
            "data.source=bundled",
            f"data.bundled_samples={max(batch, 64)}",
            "data.num_workers=0",
            f"train.batch_size={batch}",
            "train.max_steps=1000",
            "train.warmup_epochs=0",
            f"train.amp={amp}",
            f"train.compile={str(compile_).lower()}",
            "train.device=cpu",
            f"enhancer.kwargs={{embed_dim: {width}, depth: {depth}, num_heads: {heads}}}",
            f"run.dir={run_dir}",
            "run.progress=false",
            "run.tensorboard=false",
            "tokenizer.checkpoint=",
        ],
    )
    torch.manual_seed(0)
    tok = build_tokenizer(cfg.tokenizer).freeze()
    return Trainer(build_cim_task(cfg, tok), cfg)


def finetune_step(width: int, amp: str, batch: int, depth: int) -> Callable[[], None]:
    heads = max(1, width // 64)
    torch.manual_seed(0)
    net = timm.create_model(
        "vit_tiny_patch16_224",
        num_classes=10,
        img_size=32,
        patch_size=4,
        embed_dim=width,
        depth=depth,
        num_heads=heads,
        drop_path_rate=0.1,
    )
    dtype = torch.bfloat16 if amp == "bf16" else None
    choose_attention(net, torch.device("cpu"), dtype)  # as the engine does
    opt = build_adamw(net, 1e-4, 0.05, (0.9, 0.999))
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))

    def step() -> None:
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 3.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def build_variants(args: argparse.Namespace, work: Path) -> dict[str, Callable[[], object]]:
    """Name -> one step, for every width x job x dtype asked for."""
    dtypes = ["fp32"] + (["bf16"] if args.bf16 else [])
    steps: dict[str, Callable[[], object]] = {}
    for w in args.widths:
        for dt in dtypes:
            trainer = cim_trainer(w, AMPS[dt], args.batch, work / f"cim_{w}_{dt}", args.depth)
            batch = next(iter(trainer.loader))
            steps[f"cim/{w}/{dt}"] = _cim_step(trainer, batch)
            steps[f"finetune/{w}/{dt}"] = finetune_step(w, dt, args.batch, args.depth)
        for dt in dtypes if w in args.compile_widths else []:
            trainer = cim_trainer(
                w, AMPS[dt], args.batch, work / f"cim_{w}_{dt}_c", args.depth, True
            )
            steps[f"cim/{w}/{dt}-compiled"] = _cim_step(trainer, next(iter(trainer.loader)))
        if args.bf16 and w in args.fused_widths:
            # The alternative the engine turns away from on CPU: torch's fused attention.
            trainer = cim_trainer(w, "bf16", args.batch, work / f"cim_{w}_fused", args.depth)
            _fused_attention(trainer.model)
            steps[f"cim/{w}/bf16-fused-attn"] = _cim_step(trainer, next(iter(trainer.loader)))
    return steps


def _fused_attention(model: torch.nn.Module) -> None:
    for module in model.modules():
        if getattr(module, "fused_attn", None) is False:
            module.fused_attn = True


def _cim_step(trainer: Trainer, batch: dict[str, Any]) -> Callable[[], None]:
    def step() -> None:
        trainer.train_step(lambda: batch)

    return step


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    res: dict[str, Any] = {
        "benchmark": "cpu_precision",
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "machine": machine(torch.device("cpu")),
        "threads": args.threads,
        "batch": args.batch,
        "depth": args.depth,
        "bf16_measured": args.bf16,
    }
    dtypes = ("fp32", "bf16") if args.bf16 else ("fp32",)
    res["peak_tflops"] = matmul_peak(torch.device("cpu"), args.peak_n, reps=3, dtypes=dtypes)
    with tempfile.TemporaryDirectory(prefix="cpu_precision_") as tmp:
        steps = build_variants(args, Path(tmp))
        times: dict[str, list[float]] = {k: [] for k in steps}
        for rnd in range(args.warmup + args.reps):
            for name, step in steps.items():
                t0 = time.perf_counter()
                step()
                if rnd >= args.warmup:
                    times[name].append(time.perf_counter() - t0)
        # A compiled step does the eager step's work (the counter cannot see inside Inductor).
        eager = {k: v for k, v in steps.items() if not k.endswith("-compiled")}
        flops = {name: step_flops(step) / args.batch for name, step in eager.items()}
        for name in steps.keys() - eager.keys():
            flops[name] = flops[name.removesuffix("-compiled")]
    res["rows"] = rows(times, flops, res["peak_tflops"], args.batch)
    return res


def rows(
    times: dict[str, list[float]], flops: dict[str, float], peak: dict[str, float], batch: int
) -> list[dict[str, Any]]:
    out = []
    for name, ts in times.items():
        job, width, dt = name.split("/")
        med = statistics.median(ts)
        ips = batch / med
        row = {
            "job": job,
            "width": int(width),
            "dtype": dt,
            "ms_per_step": 1e3 * med,
            "img_per_s": ips,
            "gflops_per_image": flops[name] / 1e9,
            "mfu": ips * flops[name] / 1e12 / peak[f"{dt[:4]}_tflops"],
        }
        fp32 = times.get(f"{job}/{width}/fp32")
        if dt.startswith("bf16") and fp32:
            row["speedup_over_fp32"] = statistics.median(fp32) / med
        eager = times.get(f"{job}/{width}/{dt.removesuffix('-compiled')}")
        if dt.endswith("-compiled") and eager:
            row["speedup_over_eager"] = statistics.median(eager) / med
        out.append(row)
    return out


def table(res: dict[str, Any]) -> str:
    lines = [
        "| job | width | dtype | ms/step | img/s | bf16 / fp32 | compiled / eager | GFLOP/img "
        "| MFU |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        sp = f"{r['speedup_over_fp32']:.2f}x" if "speedup_over_fp32" in r else ""
        ce = f"{r['speedup_over_eager']:.2f}x" if "speedup_over_eager" in r else ""
        lines.append(
            f"| {r['job']} | {r['width']} | {r['dtype']} | {r['ms_per_step']:.0f} | "
            f"{r['img_per_s']:.1f} | {sp} | {ce} | {r['gflops_per_image']:.3f} | "
            f"{100 * r['mfu']:.1f} % |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--widths", type=int, nargs="+", default=[192, 384, 768])
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--peak-n", type=int, default=2048)
    p.add_argument(
        "--fused-widths",
        type=int,
        nargs="*",
        default=[192],
        help="widths that also get a bf16 row with torch's fused attention",
    )
    p.add_argument(
        "--compile-widths",
        type=int,
        nargs="*",
        default=[],
        help="widths that also get CIM rows with train.compile=true (compiled in warm-up)",
    )
    p.add_argument("--force-bf16", action="store_true", help="measure bf16 without AMX too")
    p.add_argument("--out", default="bench/results/cpu_precision.json")
    args = p.parse_args(argv)
    args.bf16 = cpu_bf16_units() is not None or args.force_bf16
    if not args.bf16:
        print("note: no AMX on this CPU; bf16 is emulated there and not measured (--force-bf16)")
    res = run(args)
    print(table(res))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
