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
from cimpt.engine.loop import FitResult, Trainer, print_resume_hint
from cimpt.engine.optim import param_groups
from cimpt.engine.precision import resolve_amp
from cimpt.engine.rng import seed_model_init
from cimpt.engine.task import Task
from cimpt.errors import CimptError
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
        self.seg, self.val, self.cfg = model, val, cfg
        self.source, self.classes = source, classes
        self.eval_every_epochs = int(cfg.eval.every_epochs)
        self.device = torch.device("cpu")
        self.best: dict[str, float] = {"miou": -1.0, "step": -1}
        self.last: dict[str, Any] = {}

    def on_device(self, device: torch.device) -> None:
        self.device = device

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]] | None:
        """ViT: timm's layer-wise decay groups for the backbone (embeddings lowest, each
        block one layer, the last block one below the decoder), the decoder and the level
        necks at full lr. CNN or ``segment.layer_decay=1``: ``None`` (the engine's split)."""
        decay = float(self.cfg.segment.layer_decay)
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
        cfg = self.cfg
        amp = resolve_amp(str(cfg.train.amp), self.device)
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
            **init_record(self.cfg, self.source),
            "train_images": len(self.dataset),  # type: ignore[arg-type]
            "val_images": len(self.val),
            "classes": self.classes,
            "ignore_index": int(self.cfg.segment.ignore_index),
            "inference": _inference_note(self.cfg),
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
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def eval_spec(cfg: DictConfig) -> EvalSpec:
    """Sliding-window settings and the rest of what evaluation needs, from the config."""
    s, crop = cfg.segment, int(cfg.data.img_size)
    return EvalSpec(
        crop=crop,
        stride=int(s.stride) or max(1, crop * 2 // 3),
        num_classes=int(s.num_classes),
        ignore_index=int(s.ignore_index),
        batch_size=int(cfg.eval.batch_size),
        num_workers=int(cfg.data.num_workers),
        figure_images=int(s.figure_images),
        mean=list(cfg.data.mean),
        std=list(cfg.data.std),
    )


def _inference_note(cfg: DictConfig) -> str:
    spec = eval_spec(cfg)
    side = int(cfg.segment.short_side)
    scale = f"short side {side}" if side else "stored size"
    return f"sliding window {spec.crop}x{spec.crop}, stride {spec.stride}, at {scale}"


def class_names(cfg: DictConfig) -> list[str]:
    """``segment.class_names``, or ``class_0 ..`` when empty; checked against the count."""
    s = cfg.segment
    names = [str(n) for n in s.class_names] or [f"class_{i}" for i in range(int(s.num_classes))]
    if len(names) != int(s.num_classes):
        raise CimptError(
            f"config key 'segment.class_names': {len(names)} names for "
            f"segment.num_classes={s.num_classes}"
        )
    return names


def check_segment_config(cfg: DictConfig) -> None:
    """Ranges of the ``segment.*`` keys (one line each), before anything is read."""
    s = cfg.segment
    checks = [
        (s.num_classes >= 1, "num_classes", "set it to the number of classes (ids 0..K-1)"),
        (
            not 0 <= s.ignore_index < s.num_classes,
            "ignore_index",
            f"{s.ignore_index} is a class id (0..{s.num_classes - 1}); use an id outside",
        ),
        (s.short_side >= 0, "short_side", "must be >= 0 (0: as stored)"),
        (
            len(s.scale_range) == 2 and 0 < s.scale_range[0] <= s.scale_range[1],
            "scale_range",
            "must be [min, max] with 0 < min <= max",
        ),
        (s.stride >= 0, "stride", "must be >= 0 (0: 2/3 of data.img_size)"),
        (s.decoder_dim >= 1, "decoder_dim", "must be positive"),
        (len(s.vit_levels) >= 1, "vit_levels", "needs at least one level"),
        (0.0 < s.layer_decay <= 1.0, "layer_decay", "must be in (0, 1]"),
        (s.figure_images >= 0, "figure_images", "must be >= 0"),
        (bool(cfg.data.val_path), "data.val_path", "set the labelled evaluation split"),
    ]
    for ok, key, reason in checks:
        if not ok:
            name = key if key.startswith("data.") else f"segment.{key}"
            raise CimptError(f"config key '{name}': {reason}")


def build_data(cfg: DictConfig) -> tuple[SegFolder, SegFolder]:
    """Both splits, scanned and checked (``cimpt.seg.data``), with their transforms."""
    s, d = cfg.segment, cfg.data
    k, ignore = int(s.num_classes), int(s.ignore_index)
    mean, std = list(d.mean), list(d.std)
    train_tf = SegTrainTransform(
        int(d.img_size), int(s.short_side), (float(s.scale_range[0]), float(s.scale_range[1])),
        float(d.hflip), mean, std, ignore,
    )  # fmt: skip
    val_tf = SegEvalTransform(int(s.short_side), mean, std)
    train = build_split(str(d.path), "data.path", k, ignore, train_tf)
    val = build_split(str(d.val_path), "data.val_path", k, ignore, val_tf)
    return train, val


def build_segment_task(cfg: DictConfig) -> SegTask:
    """Check everything (config, checkpoint, every label file) before anything is written."""
    check_segment_config(cfg)
    classes = class_names(cfg)
    seed_model_init(int(cfg.seed), bool(cfg.train.deterministic))
    # A ViT is rebuilt at the crop size; its position embeddings are resampled on loading.
    source = resolve_init(cfg, keep=("data.img_size",))
    train, val = build_data(cfg)
    net = build_seg_net(cfg, source, len(classes))
    return SegTask(SegModel(net, int(cfg.segment.ignore_index)), train, val, cfg, source, classes)


def segment(cfg: DictConfig) -> FitResult:
    """Build the task and train it on the engine."""
    trainer = Trainer(build_segment_task(cfg), cfg)
    result = trainer.fit()
    if trainer.dist.is_main and result.interrupted:
        print_resume_hint(result, "segment")
    return result
