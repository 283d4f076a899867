"""``cimpt pretrain``: CIM pre-training (or a baseline) as a ``Task`` for the generic engine.

Wires the parts together: the two-view dataset and the objective's masks (``cimpt.data``),
the frozen tokenizer (``cimpt.tokenizers``) when the objective reads token ids, and the
objective's module (``cimpt.build``: ``cimpt.cim`` for respix/revdet, ``cimpt.baselines``
for mae, simmim and beit). At the end the enhancer alone is exported to
``run.dir/enhancer.safetensors``.
Every objective's checkpoints have kind ``cim`` ("a pre-training run"), so export,
visualize and the evaluations read them alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from cimpt.config import adopt_value, token_grid, tokenizer_resolution, typed
from cimpt.engine.loop import FitResult, Trainer, print_resume_hint
from cimpt.engine.rng import seed_model_init
from cimpt.engine.task import Task
from cimpt.errors import CimptError
from cimpt.tokenizers.base import ImageTokenizer

ENHANCER_FILE = "enhancer.safetensors"


class CIMTask(Task):
    kind = "cim"
    label = "pretrain"
    arch_keys = (
        "objective",
        "generator.depth",
        "generator.embed_dim",
        "generator.num_heads",
        "generator.mlp_ratio",
        "enhancer.name",
        "enhancer.patch_size",
        "enhancer.kwargs",
        "data.img_size",
        "tokenizer.vocab_size",
        "tokenizer.downsample",
        "loss.respix_residual",
        "mae.decoder_dim",
        "mae.decoder_depth",
        "mae.decoder_heads",
    )

    def __init__(self, model: torch.nn.Module, dataset: Any, collate: Any, cfg: DictConfig):
        super().__init__(model, dataset, collate)
        self.cfg = cfg

    def describe(self) -> str:
        c = typed(self.cfg)
        g = token_grid(c)
        text = (
            f"objective {c.objective}, {g}x{g} grid of {c.enhancer.patch_size} px cells at "
            f"{c.data.img_size} px"
        )
        if getattr(self.model, "tokenizer", None) is not None:
            text += f", tokenizer view {tokenizer_resolution(c)} px"
        return text

    def saved_modules(self) -> dict[str, torch.nn.Module]:
        # generator, enhancer and heads; the frozen tokenizer is not a child (never saved).
        return dict(self.model.named_children())

    def visualize(self, step: int, batch: dict[str, Any], run_dir: Path) -> None:
        from cimpt.viz import save_cim_figure

        device = next(self.model.parameters()).device
        small = {
            k: (v[:8].to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()
        }
        panels = self.model.visualize(small)  # type: ignore[operator]
        save_cim_figure(panels, run_dir / "figures" / f"cim_{step:08d}.png")

    def finish(self, run_dir: Path) -> None:
        from cimpt.export import save_enhancer

        save_enhancer(self.model.enhancer, self.cfg, run_dir / ENHANCER_FILE)  # type: ignore[arg-type]


def load_frozen_tokenizer(cfg: DictConfig) -> ImageTokenizer:
    """Load ``tokenizer.checkpoint``; its architecture overrides the config's tokenizer keys.

    The checkpoint is the truth about the tokenizer (a user should not have to repeat its
    widths); the adopted values are written into ``cfg`` so that ``config.yaml`` and the
    grid/vocabulary checks of ``build.build_cim`` see the real ones.
    """
    from cimpt.tokenizers.load import load_tokenizer

    if not cfg.tokenizer.checkpoint:
        raise CimptError(
            "tokenizer.checkpoint is empty: train one with `cimpt tokenizer train "
            "configs/cifar10_tokenizer.yaml` (or convert the DALL-E files) and pass "
            "tokenizer.checkpoint=<run dir or .safetensors>"
        )
    tok = load_tokenizer(cfg.tokenizer.checkpoint, kind=cfg.tokenizer.kind)
    _warn_weak_tokenizer(Path(cfg.tokenizer.checkpoint).expanduser())
    arch = {**tok.arch_config(), "vocab_size": tok.vocab_size, "downsample": tok.downsample}
    for key, value in arch.items():
        if key in cfg.tokenizer and key not in ("kind", "checkpoint", "img_size"):
            adopt_value(cfg, f"tokenizer.{key}", value, cfg.tokenizer.checkpoint)
    _warn_view_size(cfg)  # after the file's downsample replaced the config's
    return tok.freeze()


def _warn_view_size(cfg: DictConfig) -> None:
    """Warn when the tokenizer gets views of another size than it was trained on: its ids
    and reconstructions (what the generator learns and the enhancer sees) are then untested."""
    import sys

    from cimpt.tokenizers.load import trained_at

    c = typed(cfg)
    trained, now, grid = trained_at(c.tokenizer.checkpoint), tokenizer_resolution(c), token_grid(c)
    if trained is None or trained == now:
        return
    print(
        f"warning: tokenizer.checkpoint was trained on {trained} px views, this run gives it "
        f"{now} px views ({grid}x{grid} grid x tokenizer.downsample="
        f"{c.tokenizer.downsample}); train one at {now} px (README, 'Other image sizes')",
        file=sys.stderr,
    )


def _warn_weak_tokenizer(checkpoint: Path) -> None:
    """Warn when the tokenizer's own evaluation (``tokenizer_eval.json``, written by
    ``cimpt tokenizer train|eval`` next to it) judged it weak: the enhancer only ever sees
    its reconstructions, so a blurry tokenizer caps what pre-training can teach."""
    import json
    import sys

    folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
    report = folder / "tokenizer_eval.json"
    if not report.is_file():
        return
    try:
        verdict = str(json.loads(report.read_text()).get("verdict", ""))
    except (OSError, ValueError):
        return
    if verdict.startswith("weak"):
        print(f"warning: the tokenizer is {verdict} ({report})", file=sys.stderr)


def build_cim_task(cfg: DictConfig, tokenizer: ImageTokenizer | None = None) -> CIMTask:
    """Everything ``cimpt pretrain`` trains for ``cfg.objective``; ``tokenizer`` overrides
    ``tokenizer.checkpoint`` (objectives without token targets load none)."""
    from cimpt.build import NEEDS_TOKENIZER, build_pretrain_model
    from cimpt.data import (
        CIMCollate,
        build_dataset,
        build_mask_generator,
        build_two_view_transform,
    )
    from cimpt.data.checks import check_paths

    # MAE and SimMIM read no tokenizer: a config's leftover tokenizer path is not an error.
    check_paths(cfg, tokenizer=tokenizer is None and cfg.objective in NEEDS_TOKENIZER)
    seed_model_init(cfg.seed, cfg.train.deterministic)

    tok = tokenizer
    if tok is None and cfg.objective in NEEDS_TOKENIZER:
        tok = load_frozen_tokenizer(cfg)
    c = typed(cfg)  # after the tokenizer file's values were adopted into cfg
    # Grid and backbone checks run here, before any data is read.
    model = build_pretrain_model(c, tok)
    masks = build_mask_generator(c)
    dataset = build_dataset(c, "train", build_two_view_transform(c))
    return CIMTask(model, dataset, CIMCollate(masks), cfg)


def pretrain(cfg: DictConfig, tokenizer: ImageTokenizer | None = None) -> FitResult:
    task = build_cim_task(cfg, tokenizer)
    trainer = Trainer(task, cfg)
    result = trainer.fit()
    if trainer.dist.is_main:
        if result.interrupted:
            print_resume_hint(result, "pretrain")
        else:
            print(
                f"pre-training done: {result.run_dir} (enhancer: {result.run_dir / ENHANCER_FILE})"
            )
    return result
