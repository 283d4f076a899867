"""``cimpt segment``: fine-tune an enhancer (or train it from scratch) for semantic segmentation.

The paper's dense-prediction transfer (Fang et al., ICLR 2023: ADE20K with UperNet, after
BEiT). The encoder comes from any source ``cimpt finetune`` accepts (``init.checkpoint``: a
pre-training run or checkpoint, an exported ``enhancer.safetensors``, a fine-tuning run; empty
= scratch), read by the same code (``cimpt.eval.source.resolve_init``). Recipe: AdamW,
layer-wise lr decay on a ViT backbone (``segment.layer_decay``; the decoder at full lr),
the engine's warm-up + cosine schedule, random scale + crop + flip applied jointly to image
and label, cross-entropy that ignores void pixels, sliding-window inference. It runs on the
engine (resume, DDP, autocast, metrics.jsonl, TensorBoard, progress bar); every
``eval.every_epochs`` epochs and at the end it writes mIoU, per-class IoU and pixel accuracy
of the whole ``data.val_path`` split to metrics.jsonl, a figure to ``figures/``, and the
best and last result to ``results.json``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from timm.optim import param_groups_layer_decay
from torch import nn

from cimpt.atomic import write_json
from cimpt.config import RootConfig, SegmentConfig, typed
from cimpt.engine.distributed import distributed_rank_world
from cimpt.engine.loop import FitResult, Trainer, print_resume_hint
from cimpt.engine.optim import param_groups
from cimpt.engine.precision import resolve_amp
from cimpt.engine.rng import seed_model_init
from cimpt.engine.task import Task
from cimpt.errors import CimptError, ConfigError
from cimpt.eval.source import BackboneSource, init_record, resolve_init
from cimpt.seg.data import SegCollate, SegFolder, build_split
from cimpt.seg.evaluate import EvalSpec, evaluate_split
from cimpt.seg.figure import seg_figure
from cimpt.seg.metrics import seg_scores
from cimpt.seg.model import SegModel, build_seg_net
from cimpt.seg.transforms import SegEvalTransform, SegTrainTransform

RESULTS_FILE = "results.json"


def _null_nan(v: float) -> float | None:
    return None if math.isnan(v) else round(v, 4)


class SegTask(Task):
    """Segmentation as an engine Task: UperNet on the enhancer, evaluated on the val split."""

    kind = "segment"
    arch_keys = (
        "enhancer.name",
        "enhancer.patch_size",
        "enhancer.kwargs",
        "data.img_size",
        "segment.num_classes",
        "segment.decoder_dim",
        "segment.vit_levels",
    )

    def __init__(
        self,
        model: SegModel,
        train: SegFolder,
        val: SegFolder,
        cfg: DictConfig,
        source: BackboneSource | None,
        classes: list[str],
    ) -> None:
        super().__init__(model, train, SegCollate())
        self.seg, self.val = model, val
        self.cfg = cfg  # the record (the engine saves it)
        self.settings = typed(cfg)  # the same values, typed, for reading
        self.source, self.classes = source, classes
        self.eval_every_epochs = self.settings.eval.every_epochs
        self.device = torch.device("cpu")
        self.best: dict[str, float] = {"miou": -1.0, "step": -1}
        self.last: dict[str, Any] = {}

    def on_device(self, device: torch.device) -> None:
        self.device = device

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]] | None:
        """ViT: timm's layer-wise decay groups for the backbone (embeddings lowest, each
        block one layer, the last block one below the decoder), the decoder and the level
        necks at full lr. CNN or ``segment.layer_decay=1``: ``None`` (the engine's split)."""
        decay = self.settings.segment.layer_decay
        net = self.seg.net
        if net.backbone.kind != "vit" or decay >= 1.0:
            return None
        vit = net.backbone.net
        groups = param_groups_layer_decay(
            vit, weight_decay, no_weight_decay_list=net.no_weight_decay(), layer_decay=decay
        )
        # timm gives the backbone's top layer (the last block: the final norm is pruned) scale
        # 1; BEiT puts the decoder one layer above it, so every backbone layer decays once more:
        # embeddings decay ** (depth + 1), block i (1-based) decay ** (depth + 1 - i).
        groups = [{**g, "lr_scale": g["lr_scale"] * decay} for g in groups]
        head = nn.ModuleDict({"rescale": net.backbone.rescale, "decoder": net.decoder})
        return groups + [{**g, "lr_scale": 1.0} for g in param_groups(head, weight_decay)]

    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        cfg = self.settings
        amp = resolve_amp(cfg.train.amp, self.device)
        matrix, rows = evaluate_split(self.seg.net, self.val, eval_spec(cfg), self.device, amp)
        sc = seg_scores(matrix)
        per_class = dict(zip(self.classes, sc.iou, strict=True))
        self.last = {"miou": sc.miou, "pixel_acc": sc.pixel_acc, "per_class_iou": per_class}
        self.last["step"] = step
        if sc.miou > self.best["miou"]:  # nan (no valid pixel) never becomes the best
            self.best = {"miou": sc.miou, "step": step}
        if rows and _is_main():
            figures = Path(cfg.run.dir).expanduser() / "figures"
            seg_figure(rows, figures / f"segment_{step:06d}.png")
        vals = {"val_miou": sc.miou, "val_pixel_acc": sc.pixel_acc}
        vals.update({f"val_iou/{name}": v for name, v in per_class.items()})
        vals["best_miou"] = self.best["miou"]
        return vals

    def extra_state(self) -> dict[str, Any]:
        return {"best": dict(self.best), "last": dict(self.last)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.best = {k: float(v) for k, v in state.get("best", self.best).items()}
        self.last = dict(state.get("last", {}))

    def finish(self, run_dir: Path) -> None:
        last = dict(self.last)
        if last:
            last["miou"] = _null_nan(float(last["miou"]))
            last["pixel_acc"] = _null_nan(float(last["pixel_acc"]))
            last["per_class_iou"] = {k: _null_nan(v) for k, v in last["per_class_iou"].items()}
        summary = {
            "kind": self.kind,
            **init_record(self.settings.enhancer, self.source),
            "train_images": len(self.dataset),  # type: ignore[arg-type]
            "val_images": len(self.val),
            "classes": self.classes,
            "ignore_index": self.settings.segment.ignore_index,
            "inference": _inference_note(self.settings),
            "miou_excludes": "classes absent from both ground truth and prediction of the split",
            "best": self.best,
            "last": last,
        }
        write_json(run_dir / RESULTS_FILE, summary)
        print(
            f"segment done: last mIoU {self.last.get('miou', float('nan')):.2f} %, best "
            f"{self.best['miou']:.2f} % (step {int(self.best['step'])}); {run_dir / RESULTS_FILE}"
        )


def _is_main() -> bool:
    return distributed_rank_world()[0] == 0


def eval_spec(cfg: RootConfig) -> EvalSpec:
    """Sliding-window settings and the rest of what evaluation needs, from the config."""
    s, crop = cfg.segment, cfg.data.img_size
    return EvalSpec(
        crop=crop,
        stride=s.stride or max(1, crop * 2 // 3),
        num_classes=s.num_classes,
        ignore_index=s.ignore_index,
        batch_size=cfg.eval.batch_size,
        num_workers=cfg.data.num_workers,
        figure_images=s.figure_images,
        mean=cfg.data.mean,
        std=cfg.data.std,
    )


def _inference_note(cfg: RootConfig) -> str:
    spec = eval_spec(cfg)
    side = cfg.segment.short_side
    scale = f"short side {side}" if side else "stored size"
    return f"sliding window {spec.crop}x{spec.crop}, stride {spec.stride}, at {scale}"


def class_names(s: SegmentConfig) -> list[str]:
    """``segment.class_names``, or ``class_0 ..`` when empty; checked against the count."""
    names = list(s.class_names) or [f"class_{i}" for i in range(s.num_classes)]
    if len(names) != s.num_classes:
        raise CimptError(
            f"config key 'segment.class_names': {len(names)} names for "
            f"segment.num_classes={s.num_classes}"
        )
    return names


def check_segment_config(cfg: RootConfig) -> None:
    """Ranges of the ``segment.*`` keys and the labelled split (one line each), before
    anything is read."""
    cfg.segment.check()
    if not cfg.data.val_path:
        raise ConfigError("config key 'data.val_path': set the labelled evaluation split")


def build_data(cfg: RootConfig) -> tuple[SegFolder, SegFolder]:
    """Both splits, scanned and checked (``cimpt.seg.data``), with their transforms."""
    s, d = cfg.segment, cfg.data
    k, ignore, mean, std = s.num_classes, s.ignore_index, d.mean, d.std
    scale = (s.scale_range[0], s.scale_range[1])
    train_tf = SegTrainTransform(d.img_size, s.short_side, scale, d.hflip, mean, std, ignore)
    val_tf = SegEvalTransform(s.short_side, mean, std)
    train = build_split(d.path, "data.path", k, ignore, train_tf)
    val = build_split(d.val_path, "data.val_path", k, ignore, val_tf)
    return train, val


def build_segment_task(cfg: DictConfig) -> SegTask:
    """Check everything (config, checkpoint, every label file) before anything is written."""
    given = typed(cfg)
    check_segment_config(given)
    classes = class_names(given.segment)
    seed_model_init(cfg.seed, cfg.train.deterministic)
    # A ViT is rebuilt at the crop size; its position embeddings are resampled on loading.
    source = resolve_init(cfg, keep=("data.img_size",))
    c = typed(cfg)  # after the checkpoint's architecture was adopted into cfg
    train, val = build_data(c)
    net = build_seg_net(c, source, len(classes))
    return SegTask(SegModel(net, c.segment.ignore_index), train, val, cfg, source, classes)


def segment(cfg: DictConfig) -> FitResult:
    """Build the task and train it on the engine."""
    trainer = Trainer(build_segment_task(cfg), cfg)
    result = trainer.fit()
    if trainer.dist.is_main and result.interrupted:
        print_resume_hint(result, "segment")
    return result
