"""One short, prepared GPU check of the paper-scale CIM step (ViT-B/16 with the DALL-E tokenizer).

Fang et al., "Corrupted Image Modeling" (ICLR 2023): ViT-B/16 enhancer at 224 px, DALL-E dVAE
tokenizer (vocabulary 8192, 8x downsampling) on a 112 px view, 14x14 token grid, a small BEiT
generator (here depth 4, ``configs/imagenet_vit_b.yaml``). In one process, on one GPU, this
measures and writes a JSON record (rewritten after every section, so a cut-off run keeps what
it measured):

1. ``machine``: torch, CUDA, GPU and CPU (AMX flags) as seen.
2. ``peak``: the dense matmul rate in bf16 and fp32 (the ceilings for MFU).
3. ``steps``: img/s, ms/step, peak memory and FLOPs/image of
   * the CIM step, exactly as ``cimpt pretrain`` runs it (``Trainer.train_step``: bf16
     autocast, fp32 tokenizer, clip, NaN guard, fused AdamW) on a fixed batch, eager and with
     ``torch.compile``; also eager with ``tokenizer.precision=amp`` (what the fp32 tokenizer
     costs) and with ``train.deterministic=true`` (the config default);
   * a plain supervised step of timm's ViT-B/16 (1000 classes, bf16 autocast, clip, fused
     AdamW), eager and compiled; the CIM/supervised img/s ratio (target >= 0.35: the FLOP
     ratio is about 0.42 because the DALL-E encoder and decoder cost about a ViT-B forward
     and backward).
4. ``flips``: the share of token ids that change when the tokenizer runs under bf16 autocast
   instead of fp32 (random DALL-E weights), and the same for the precision CIM uses.
5. ``ddp``: with more than one GPU, two steps of ``cimpt pretrain`` under torchrun.

``--tiny`` shrinks every size so the whole script runs on a CPU in seconds (the test suite
does that); it then checks the code paths, not the speed.

Usage:
    python bench/gpu_check.py [--out FILE] [--batch 128] [--steps 20] [--no-compile] [--tiny]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from cimpt.config import load_config
from cimpt.engine.loop import Trainer
from cimpt.engine.optim import build_adamw
from cimpt.engine.precision import cpu_bf16_units, cpuinfo_field, full_precision
from cimpt.pretrain import build_cim_task
from cimpt.tokenizers.dalle import DalleTokenizer
from cimpt.tokenizers.load import save_tokenizer
from compute import matmul_peak, step_flops, sync

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "src" / "cimpt" / "configs" / "imagenet_vit_b.yaml"
RATIO_TARGET = 0.35
# The tiny variant: every size shrunk, same structure (used by the test suite on CPU).
TINY = {
    "overrides": [
        "data.img_size=32",
        "enhancer.patch_size=8",
        "enhancer.kwargs={embed_dim: 64, depth: 2, num_heads: 2}",
        "generator.depth=1",
        "generator.embed_dim=32",
        "generator.num_heads=2",
    ],
    "dalle": {"encoder_hid": 8, "encoder_blocks": 1, "decoder_init": 8, "decoder_hid": 8},
    "supervised": {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2},
}


# ---- the record ---------------------------------------------------------------------------
class Record:
    """The JSON record, written to ``path`` after every section."""

    def __init__(self, path: Path, args: argparse.Namespace) -> None:
        self.path = path
        self.data: dict[str, Any] = {
            "benchmark": "gpu_check",
            "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "args": vars(args),
        }

    def section(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run one section; an exception is recorded (with its last lines) instead of raised."""
        t0 = time.perf_counter()
        try:
            value = fn()
        except Exception as exc:  # a check script reports, it does not stop at the first error
            trace = traceback.format_exc()[-2000:]
            value = {"error": f"{type(exc).__name__}: {exc}", "trace": trace}
        self.data[name] = value
        self.data.setdefault("section_s", {})[name] = round(time.perf_counter() - t0, 1)
        self.write()
        print(f"[{name}] {json.dumps(value, default=str)[:600]}", flush=True)
        return value

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=1, default=str) + "\n")


def machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_amx_bf16": cpu_bf16_units() == "AMX",
        "cpu_bf16_units": cpu_bf16_units(),
        "cpu_model": cpuinfo_field("model name") or platform.processor(),
        "device": str(device),
    }
    if device.type == "cuda":
        info.update(
            gpu=torch.cuda.get_device_name(device),
            gpus=torch.cuda.device_count(),
            cuda=torch.version.cuda,
            gpu_memory_gib=torch.cuda.get_device_properties(device).total_memory / 2**30,
        )
    return info


# ---- the CIM step --------------------------------------------------------------------------
def cim_config(args: argparse.Namespace, run_dir: Path, extra: list[str]) -> DictConfig:
    overrides = [
        "data.source=bundled",
        f"data.bundled_samples={max(args.batch, 64)}",
        "data.num_workers=0",
        f"train.batch_size={args.batch}",
        "train.max_steps=1000",
        "train.warmup_epochs=0",
        "train.deterministic=false",
        f"train.device={args.device}",
        f"run.dir={run_dir}",
        "run.progress=false",
        "run.tensorboard=false",
        "tokenizer.checkpoint=",
        *(TINY["overrides"] if args.tiny else []),
        *extra,
    ]
    return load_config(CONFIG, overrides)


def dalle(args: argparse.Namespace) -> DalleTokenizer:
    torch.manual_seed(0)
    return DalleTokenizer(**(TINY["dalle"] if args.tiny else {})).freeze()


def time_steps(step: Callable[[], object], device: torch.device, warmup: int, steps: int) -> float:
    """Seconds per call: ``warmup`` untimed calls, then the mean over ``steps`` timed ones."""
    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - t0) / steps


def measure(
    step: Callable[[], object], device: torch.device, batch: int, args: argparse.Namespace
) -> dict[str, float]:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    secs = time_steps(step, device, args.warmup, args.steps)
    res = {"ms_per_step": 1e3 * secs, "img_per_s": batch / secs}
    if device.type == "cuda":
        res["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return res


def cim_step(
    args: argparse.Namespace, work: Path, name: str, extra: list[str], flops: bool
) -> dict[str, Any]:
    """The real engine's step (``Trainer.train_step``) on one fixed batch of the pipeline."""
    cfg = cim_config(args, work / name, extra)
    task = build_cim_task(cfg, dalle(args))
    trainer = Trainer(task, cfg)
    try:
        batch = next(iter(trainer.loader))
        if bool(cfg.train.deterministic):
            torch.use_deterministic_algorithms(True, warn_only=True)

        def step() -> None:
            out = trainer.train_step(lambda: batch)
            assert out.ok, "the CIM step was skipped: non-finite loss or gradients"

        res: dict[str, Any] = measure(step, trainer.device, args.batch, args)
        if flops:
            res["gflops_per_image"] = step_flops(step) / args.batch / 1e9
        vals = trainer.train_step(lambda: batch).values
        res["loss"] = float(vals["loss"])
        return res
    finally:
        torch.use_deterministic_algorithms(False)
        trainer.close()
        _free(args)


def _free(args: argparse.Namespace) -> None:
    if args.device != "cpu" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def supervised_step(args: argparse.Namespace, compile_: bool, flops: bool) -> dict[str, Any]:
    """timm ViT-B/16, 1000 classes, bf16 autocast, clip 3, fused AdamW: the reference step."""
    device = _device(args)
    torch.manual_seed(0)
    kwargs = TINY["supervised"] if args.tiny else {}
    net = timm.create_model("vit_base_patch16_224", num_classes=1000, **kwargs).to(device)
    opt = build_adamw(net, 1e-4, 0.05, (0.9, 0.999))
    size = int(kwargs.get("img_size", 224))
    x = torch.randn(args.batch, 3, size, size, device=device)
    y = torch.randint(0, 1000, (args.batch,), device=device)
    model: Any = torch.compile(net) if compile_ else net
    dtype = torch.bfloat16 if device.type == "cuda" or cpu_bf16_units() else None

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 3.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    try:
        res: dict[str, Any] = measure(step, device, args.batch, args)
        if flops:
            res["gflops_per_image"] = step_flops(step) / args.batch / 1e9
        return res
    finally:
        _free(args)


def _device(args: argparse.Namespace) -> torch.device:
    if args.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(args.device)


def steps_section(args: argparse.Namespace, work: Path, record: Record) -> None:
    """Eager first (everything), compiled after (so a slow compile cuts the least)."""
    record.section("cim_eager", lambda: cim_step(args, work, "eager", [], flops=True))
    record.section("supervised_eager", lambda: supervised_step(args, False, flops=True))
    record.section(
        "cim_eager_tokenizer_amp",
        lambda: cim_step(args, work, "tok_amp", ["tokenizer.precision=amp"], flops=False),
    )
    record.section(
        "cim_eager_deterministic",
        lambda: cim_step(args, work, "det", ["train.deterministic=true"], flops=False),
    )
    if args.compile:
        record.section(
            "cim_compiled",
            lambda: cim_step(args, work, "compiled", ["train.compile=true"], flops=False),
        )
        record.section("supervised_compiled", lambda: supervised_step(args, True, flops=False))
    record.section("summary", lambda: summarize(record.data))


def summarize(data: dict[str, Any]) -> dict[str, Any]:
    """CIM/supervised img/s ratios and MFU against the measured bf16 peak."""
    out: dict[str, Any] = {"ratio_target": RATIO_TARGET}
    # MFU against the peak of the dtype the steps compute in (bf16 on GPU and AMX CPUs).
    info = data.get("machine", {})
    dtype = "bf16" if info.get("device") == "cuda" or info.get("cpu_amx_bf16") else "fp32"
    out["mfu_peak_dtype"] = dtype
    peak = data.get("peak", {}).get(f"{dtype}_tflops")
    for mode in ("eager", "compiled"):
        cim, sup = data.get(f"cim_{mode}", {}), data.get(f"supervised_{mode}", {})
        if "img_per_s" in cim and "img_per_s" in sup:
            out[f"cim_over_supervised_{mode}"] = cim["img_per_s"] / sup["img_per_s"]
    flops_cim = data.get("cim_eager", {}).get("gflops_per_image")
    flops_sup = data.get("supervised_eager", {}).get("gflops_per_image")
    if flops_cim and flops_sup:
        out["flop_ratio_supervised_over_cim"] = flops_sup / flops_cim
    if peak:
        for name in ("cim_eager", "cim_compiled", "supervised_eager", "supervised_compiled"):
            row = data.get(name, {})
            base = "cim_eager" if name.startswith("cim") else "supervised_eager"
            gf = data.get(base, {}).get("gflops_per_image")
            if gf and "img_per_s" in row:
                out[f"mfu_{name}"] = row["img_per_s"] * gf / 1e3 / peak
    return out


# ---- tokenizer id flips -----------------------------------------------------------------------
def flip_rates(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Ids under bf16 autocast vs fp32, for the raw tokenizer and for CIM's default precision."""
    cfg = cim_config(args, work / "flips", [])
    task = build_cim_task(cfg, dalle(args))
    device = _device(args)
    model = task.model.to(device)
    loader = torch.utils.data.DataLoader(task.dataset, args.batch, collate_fn=task.collate)
    batch = next(iter(loader))
    x_tok = batch["x_tok"].to(device)
    tok = model.tokenizer
    with torch.no_grad(), full_precision(device):
        ref = tok.encode(x_tok)
        img_ref = tok.decode(ref).float()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        raw = tok.encode(x_tok)
        img_raw = tok.decode(ref).float()
        cim = model.golden_tokens(x_tok)  # tokenizer.precision=fp32 (the default)
    return {
        "tokens": int(ref.numel()),
        "flip_rate_bf16_autocast": float((raw != ref).float().mean()),
        "flip_rate_cim_default": float((cim != ref).float().mean()),
        "decode_max_abs_diff_bf16": float((img_raw - img_ref).abs().max()),
        "tokenizer": "DALL-E dVAE, random weights" + (" (tiny widths)" if args.tiny else ""),
    }


# ---- DDP ------------------------------------------------------------------------------------
def ddp_smoke(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Two steps of ``cimpt pretrain`` under torchrun, one process per GPU (or --ddp-procs)."""
    procs = args.ddp_procs or (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    if procs < 2:
        return {"skipped": f"{procs} GPU(s): DDP needs at least 2"}
    tok_file = save_tokenizer(dalle(args), work / "dalle_random.safetensors")
    cfg = cim_config(args, work / "ddp", [])
    overrides = [
        *(f"{k}={v}" for k, v in _flat(cfg).items() if k.startswith(("data.", "train.", "run."))),
        *(TINY["overrides"] if args.tiny else []),
        f"tokenizer.checkpoint={tok_file}",
        f"train.batch_size={args.batch * procs}",
        "train.max_steps=2",
    ]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={procs}", "-m", "cimpt.cli", "pretrain", str(CONFIG), *overrides,
    ]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.ddp_timeout)
    metrics = work / "ddp" / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if proc.returncode == 0 else []
    return {
        "procs": procs,
        "returncode": proc.returncode,
        "wall_s": time.perf_counter() - t0,
        "steps_logged": len(lines),
        "stderr_tail": proc.stderr.strip().splitlines()[-3:],
    }


def _flat(cfg: DictConfig, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        if isinstance(v, DictConfig):
            out.update(_flat(v, f"{prefix}{k}."))
        elif not isinstance(v, (list, dict)) and v is not None:
            out[f"{prefix}{k}"] = v
    return out


# ---- main -----------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench/results/gpu_check.json")
    p.add_argument("--device", default="auto", help="auto | cuda | cpu")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compile inside)")
    p.add_argument("--peak-n", type=int, default=8192, help="matmul side for the peak")
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--ddp-procs", type=int, default=0, help="0: one per GPU")
    p.add_argument("--ddp-timeout", type=float, default=240)
    p.add_argument("--tiny", action="store_true", help="tiny sizes: a CPU smoke test")
    args = p.parse_args(argv)
    if args.tiny:
        args.batch, args.peak_n = min(args.batch, 4), min(args.peak_n, 256)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = _device(args)
    args.device = device.type
    record = Record(Path(args.out), args)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(tmp)
        record.section("machine", lambda: machine(device))
        record.section("peak", lambda: matmul_peak(device, args.peak_n))
        record.section("flips", lambda: flip_rates(args, work))
        steps_section(args, work, record)
        record.section("ddp", lambda: ddp_smoke(args, work))
    record.data["wall_s"] = round(time.perf_counter() - t0, 1)
    record.write()
    print(f"wrote {args.out} in {record.data['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
