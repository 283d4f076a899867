"""``cimpt tokenizer train``: fit a VQ-VAE tokenizer with the shared training engine.

The tokenizer is trained at the resolution CIM will use it at (``grid * downsample``, see
``cimpt.config.tokenizer_resolution``), on single random-resized crops in [0, 1]. The run
directory gets checkpoints (resumable with ``resume=auto``), ``metrics.jsonl``, figures and,
at the end, ``tokenizer.safetensors``: the file ``tokenizer.checkpoint`` points at.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from cimpt.config import tokenizer_resolution, typed
from cimpt.engine.loop import FitResult, Trainer, print_resume_hint
from cimpt.engine.rng import seed_model_init
from cimpt.engine.task import Task
from cimpt.errors import CimptError
from cimpt.models.modes import eval_mode
from cimpt.tokenizers.base import ImageTokenizer
from cimpt.tokenizers.evaluate import evaluate_tokenizer_command, save_reconstruction_figure
from cimpt.tokenizers.load import build_tokenizer, save_tokenizer

TOKENIZER_FILE = "tokenizer.safetensors"


class _OnImages(torch.nn.Module):
    """Adapts the tokenizer's ``forward(x)`` to the engine's ``forward(batch)``."""

    def __init__(self, tokenizer: ImageTokenizer) -> None:
        super().__init__()
        self.tokenizer = tokenizer

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.tokenizer(batch["x"])


class TokenizerTask(Task):
    kind = "tokenizer"
    arch_keys = (
        "tokenizer.kind",
        "tokenizer.vocab_size",
        "tokenizer.downsample",
        "tokenizer.width",
        "tokenizer.res_blocks",
        "tokenizer.embed_dim",
    )

    def __init__(
        self, tokenizer: ImageTokenizer, dataset: Any, collate: Any, view_size: int = 0
    ) -> None:
        super().__init__(_OnImages(tokenizer), dataset, collate)
        self.tokenizer = tokenizer
        self.view_size = view_size  # side of the training views, recorded in the file

    def saved_modules(self) -> dict[str, torch.nn.Module]:
        return {"tokenizer": self.tokenizer}

    def describe(self) -> str:
        """The view size: the one pre-training must give it (README, 'Other image sizes')."""
        if not self.view_size:
            return ""
        grid = self.view_size // self.tokenizer.downsample
        return f"{self.view_size} px views, {grid}x{grid} tokens of {self.tokenizer.downsample} px"

    def visualize(self, step: int, batch: dict[str, Any], run_dir: Path) -> None:
        tok = self.tokenizer
        x = batch["x"][:16].to(next(tok.parameters()).device)
        with eval_mode(tok), torch.no_grad():
            recon = tok.decode(tok.encode(x))
        save_reconstruction_figure(
            x.cpu(), recon.cpu(), run_dir / "figures" / f"recon_{step:08d}.png"
        )

    def finish(self, run_dir: Path) -> None:
        save_tokenizer(self.tokenizer, run_dir / TOKENIZER_FILE, self.view_size)


def build_tokenizer_task(cfg: DictConfig) -> TokenizerTask:
    from cimpt.data import ImageCollate, build_dataset, build_single_view_transform
    from cimpt.data.checks import check_paths

    check_paths(cfg, val="optional")  # the evaluation at the end must not fail on a bad path
    c = typed(cfg)  # after check_paths, which may clear data.val_path
    seed_model_init(c.seed, c.train.deterministic)

    if c.tokenizer.kind != "vqvae":
        raise CimptError(f"tokenizer.kind: only 'vqvae' can be trained, not '{c.tokenizer.kind}'")
    size = tokenizer_resolution(c)
    dataset = build_dataset(c, "train", build_single_view_transform(c.data, size))
    return TokenizerTask(build_tokenizer(c.tokenizer), dataset, ImageCollate(), size)


def train_tokenizer(cfg: DictConfig) -> FitResult:
    """Train, then evaluate on ``data.val_path`` when it is set; print where things are."""
    task = build_tokenizer_task(cfg)
    trainer = Trainer(task, cfg)
    try:
        result = trainer.fit(keep_lock=True)  # the evaluation below writes into the run too
        if trainer.dist.is_main:
            _report_and_evaluate(cfg, result)
    finally:
        trainer.close()
    return result


def _report_and_evaluate(cfg: DictConfig, result: FitResult) -> None:
    out = result.run_dir / TOKENIZER_FILE
    if result.interrupted:
        print_resume_hint(result, "tokenizer train")
        return
    print(f"tokenizer written to {out}")
    from cimpt.data import resolve_source

    # An empty val_path evaluates on CIFAR's test split; for a folder it means no evaluation.
    if cfg.data.val_path or resolve_source(cfg.data.source, cfg.data.path) in (
        "cifar10",
        "cifar100",
    ):
        evaluate_tokenizer_command(str(out), [f"run.dir={result.run_dir}"])
