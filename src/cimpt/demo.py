"""``cimpt demo``: the offline quick start.

Trains a tiny VQ-VAE tokenizer and then a tiny CIM (ViT enhancer, RESPIX) on real photographs
bundled with scikit-image, in a few minutes on a laptop CPU, with no download and no dataset
argument. Writes metrics, checkpoints and the CIM figure under ``run.dir`` (default
``runs/demo``) and prints what to run next on real data.
"""

from __future__ import annotations

import time
from pathlib import Path

from cimpt.config import load_config
from cimpt.engine.loop import FitResult, exit_status

# Sizes for a run of a few minutes on 2 CPU cores; any key=value given to `cimpt demo`
# is applied on top of these, to both stages.
TOKENIZER_STAGE = [
    "data.source=bundled",
    "data.img_size=32",
    "data.crop_scale=[0.05,0.3]",
    "data.num_workers=0",
    "tokenizer.vocab_size=256",
    "tokenizer.width=32",
    "tokenizer.res_blocks=1",
    "tokenizer.embed_dim=16",
    "train.batch_size=64",
    "train.max_steps=300",
    "train.lr=2e-3",
    "train.warmup_epochs=0.05",
    "train.weight_decay=0.0",
    "train.clip_grad=0.0",
    "run.log_every=20",
    "run.ckpt_every=300",
    "run.vis_every=300",
    "run.tensorboard=false",
]
CIM_STAGE = [
    "data.source=bundled",
    "data.img_size=32",
    "data.crop_scale=[0.05,0.3]",
    "data.num_workers=0",
    "tokenizer.vocab_size=256",
    "enhancer.patch_size=4",
    "enhancer.kwargs={embed_dim: 96, depth: 4, num_heads: 3}",
    "generator.depth=1",
    "generator.embed_dim=64",
    "generator.num_heads=2",
    "train.batch_size=32",
    "train.max_steps=200",
    "train.warmup_epochs=0.05",
    "run.log_every=20",
    "run.ckpt_every=200",
    "run.vis_every=100",
    "run.tensorboard=false",
]


def run_demo(overrides: list[str]) -> Path:
    from cimpt.pretrain import pretrain
    from cimpt.tokenizers.train import TOKENIZER_FILE, train_tokenizer

    root = Path(load_config(None, overrides).run.dir if _has(overrides, "run.dir") else "runs/demo")
    t0 = time.perf_counter()
    print(f"[1/2] training a tiny tokenizer on the bundled photographs -> {root / 'tokenizer'}")
    # A demo is meant to be run again: each run replaces the last one's checkpoints.
    again = "run.overwrite=true"
    tok_cfg = load_config(
        None, [*TOKENIZER_STAGE, again, *overrides, f"run.dir={root / 'tokenizer'}"]
    )
    _stop_if_interrupted(train_tokenizer(tok_cfg))
    print(f"[2/2] CIM pre-training (RESPIX, ViT enhancer) -> {root / 'cim'}")
    cim_cfg = load_config(
        None,
        [
            *CIM_STAGE,
            again,
            *overrides,
            f"run.dir={root / 'cim'}",
            f"tokenizer.checkpoint={root / 'tokenizer' / TOKENIZER_FILE}",
        ],
    )
    _stop_if_interrupted(pretrain(cim_cfg))
    figures = sorted((root / "cim" / "figures").glob("cim_*.png"))
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s")
    print(f"  figure:  {figures[-1] if figures else '(none)'}")
    print(f"  metrics: {root / 'cim' / 'metrics.jsonl'}")
    print(f"  encoder: {root / 'cim' / 'enhancer.safetensors'}")
    print("next, on your own images:")
    # Shipped configs by name (any directory); data.val_path= skips the tokenizer evaluation
    # instead of pointing at the CIFAR-10 folder the config names.
    print(
        "  cimpt tokenizer train cifar10_tokenizer data.path=/your/images "
        "data.val_path=/your/held_out   (or data.val_path= for no evaluation)"
    )
    print(
        "  cimpt pretrain cifar10_vit data.path=/your/images "
        "tokenizer.checkpoint=runs/cifar10_tokenizer"
    )
    return root


def _stop_if_interrupted(result: FitResult) -> None:
    """A stage stopped by a signal ends the demo with its exit status (the next stage must
    not run on a half-trained tokenizer)."""
    if result.interrupted:
        raise SystemExit(exit_status(result))


def _has(overrides: list[str], key: str) -> bool:
    return any(o.split("=", 1)[0].strip() == key for o in overrides)
