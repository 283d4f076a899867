"""``cimpt finetune``: supervised fine-tuning of a pre-trained enhancer (or from scratch).

The paper's main measure (Fang et al., ICLR 2023, Sec. 3: ImageNet top-1 after fine-tuning;
ViT-B/16 83.3, ResNet-50 80.6). The recipe is BEiT's (docs/METHOD.md): layer-wise lr decay
(timm's ``param_groups_layer_decay``), drop path, mixup + cutmix, label smoothing,
RandAugment, AdamW with warm-up then cosine, optionally an EMA of the weights. An empty
``init.checkpoint`` trains the same architecture from scratch with the identical recipe,
which is the baseline. It runs on the same engine as pre-training (checkpoints, resume,
DDP, logs, progress bar) and evaluates top-1/top-5 on ``data.val_path`` every
``eval.every_epochs`` epochs, keeping the best and the last result in ``results.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from timm.loss import SoftTargetCrossEntropy
from timm.optim import param_groups_layer_decay
from timm.utils import ModelEmaV3
from torch import nn

from cimpt.atomic import write_json, write_safetensors
from cimpt.config import EnhancerConfig, to_dict, typed
from cimpt.data import ImageCollate
from cimpt.data.checks import check_paths
from cimpt.engine.checkpoint import CONFIG_KEY
from cimpt.engine.distributed import distributed_rank_world
from cimpt.engine.loop import FitResult, Trainer, print_resume_hint
from cimpt.engine.rng import seed_model_init
from cimpt.engine.task import Task
from cimpt.eval.accuracy import evaluate_classifier, topk_correct
from cimpt.eval.augment import build_finetune_transforms, build_mixup
from cimpt.eval.classifier import Classifier, classifier_args, load_backbone_into
from cimpt.eval.labelled import LabelledData, build_labelled_data
from cimpt.eval.source import BackboneSource, init_record, resolve_init
from cimpt.export import BEST_FILE, timm_args

RESULTS_FILE = "results.json"


class SupervisedModel(nn.Module):
    """Wraps a network ``net`` (images -> logits) so ``forward(batch)`` returns losses.

    Training batches are mixed with ``mixup`` (soft targets, smoothing inside) when given,
    else the loss is cross-entropy with ``smoothing``. Returns ``{"loss", "train_acc"}``;
    ``train_acc`` compares with the unmixed labels, so it is only a rough training signal.
    """

    def __init__(self, net: nn.Module, mixup: Any = None, smoothing: float = 0.0) -> None:
        super().__init__()
        self.net = net
        self.mixup = mixup
        self.smoothing = float(smoothing)
        self.soft_ce = SoftTargetCrossEntropy()

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        x, y = batch["x"], batch["label"]
        if self.training and self.mixup is not None:
            if len(y) % 2:  # timm's mixup pairs each image with its mirror in the batch
                x, y = x[:-1], y[:-1]
            mixed, target = self.mixup(x, y)
            logits = self.net(mixed)
            loss = self.soft_ce(logits.float(), target)
        else:
            logits = self.net(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=self.smoothing)
        acc = topk_correct(logits.detach(), y, (1,))[0] / max(len(y), 1)
        return {"loss": loss, "train_acc": torch.tensor(100.0 * acc)}


class SupervisedTask(Task):
    """Fine-tuning (``kind`` finetune) or linear probing (``kind`` linprobe) as an engine Task.

    Evaluates ``net`` (and its EMA when ``finetune.ema``) on the val split, tracks the best
    top-1 (checkpointed, so a resumed run remembers it), writes the best weights to
    ``best.safetensors`` and the summary to ``results.json``.
    """

    arch_keys = (
        "enhancer.name",
        "enhancer.patch_size",
        "enhancer.kwargs",
        "data.img_size",
        "finetune.global_pool",
    )

    def __init__(
        self,
        kind: str,
        model: SupervisedModel,
        data: LabelledData,
        cfg: DictConfig,
        source: BackboneSource | None,
        layer_decay: float | None,
    ) -> None:
        super().__init__(model, data.train, ImageCollate())
        self.kind = kind
        self.sup = model
        self.data = data
        self.cfg = cfg  # the record, saved with the best weights
        self.settings = typed(cfg)  # the same values, typed, for reading
        self.source = source
        self.layer_decay = layer_decay
        self.eval_every_epochs = self.settings.eval.every_epochs
        self.ema: ModelEmaV3 | None = None
        self.device = torch.device("cpu")
        self.best: dict[str, float] = {"top1": -1.0, "top5": -1.0, "step": -1}
        self.last: dict[str, float] = {}

    def saved_modules(self) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {"model": self.sup.net}
        if self.ema is not None:
            mods["ema"] = self.ema.module
        return mods

    def on_device(self, device: torch.device) -> None:
        self.device = device
        f = self.settings.finetune
        if f.ema and self.kind == "finetune":
            self.ema = ModelEmaV3(self.sup.net, decay=f.ema_decay)

    def describe(self) -> str:
        d = self.data
        return (
            f"{d.num_classes} classes, {len(d.train)} of {d.n_train_total} labelled images "  # type: ignore[arg-type]
            f"used, {len(d.val)} to evaluate"  # type: ignore[arg-type]
        )

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]] | None:
        if self.layer_decay is None:
            return None
        backbone = self.sup.net.get_submodule("backbone")
        nwd: set[str] = getattr(backbone, "no_weight_decay", lambda: set())()
        # timm assigns each parameter a layer id from the model's group matcher (embeddings
        # 0, block i -> i + 1, head last) and scales its lr by layer_decay ** (last - id).
        return param_groups_layer_decay(
            backbone, weight_decay, no_weight_decay_list=nwd, layer_decay=self.layer_decay
        )

    def after_optimizer_step(self, step: int) -> None:
        if self.ema is not None:
            self.ema.update(self.sup.net, step=step)

    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        bs, workers = self.settings.eval.batch_size, self.settings.data.num_workers
        vals = evaluate_classifier(self.sup.net, self.data.val, bs, workers, self.device)
        if self.ema is not None:
            vals.update(
                evaluate_classifier(
                    self.ema.module,
                    self.data.val,
                    bs,
                    workers,
                    self.device,
                    prefix="ema",
                )
            )
        self.last = {"top1": vals["val_top1"], "top5": vals["val_top5"], "step": step}
        if vals["val_top1"] > self.best["top1"]:
            self.best = dict(self.last)
            self._save_best()
        vals["best_top1"] = self.best["top1"]
        return vals

    def _save_best(self) -> None:
        if distributed_rank_world()[0] != 0:
            return
        write_safetensors(
            Path(self.settings.run.dir).expanduser() / BEST_FILE,
            self.sup.net.state_dict(),
            {
                "kind": self.kind,
                "top1": f"{self.best['top1']:.4f}",
                CONFIG_KEY: json.dumps(to_dict(self.cfg)),
                # cimpt export names the classifier's outputs with these
                "cimpt_classes": json.dumps(self.data.classes),
            },
        )

    def extra_state(self) -> dict[str, Any]:
        return {"best": dict(self.best), "last": dict(self.last)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.best = {k: float(v) for k, v in state.get("best", self.best).items()}
        self.last = {k: float(v) for k, v in state.get("last", {}).items()}

    def finish(self, run_dir: Path) -> None:
        summary = {
            "kind": self.kind,
            **init_record(self.settings.enhancer, self.source),
            "label_fraction": self.settings.data.label_fraction,
            "train_images": len(self.data.train),  # type: ignore[arg-type]
            "train_images_total": self.data.n_train_total,
            "val_images": len(self.data.val),  # type: ignore[arg-type]
            "classes": self.data.classes,
            "best": self.best,
            "last": self.last,
        }
        write_json(run_dir / RESULTS_FILE, summary)
        print(
            f"{self.kind} done: last top-1 {self.last.get('top1', float('nan')):.2f} %, "
            f"best {self.best['top1']:.2f} % (step {int(self.best['step'])}); "
            f"{run_dir / RESULTS_FILE}"
        )


def start_weights(e: EnhancerConfig, source: BackboneSource | None) -> str:
    """``enhancer.pretrained`` unless ``init.checkpoint`` gives the weights (with a note)."""
    if source is not None and e.pretrained:
        print("note: enhancer.pretrained is not used: init.checkpoint gives the weights")
        return ""
    return e.pretrained


def build_finetune_task(cfg: DictConfig) -> SupervisedTask:
    """Check everything (checkpoint, labels, label fraction) before anything is written."""
    check_paths(cfg, val="required", init=True)
    seed_model_init(cfg.seed, cfg.train.deterministic)
    source = resolve_init(cfg)
    c = typed(cfg)  # after the checkpoint's architecture was adopted into cfg
    f = c.finetune
    train_tf, val_tf = build_finetune_transforms(c.data, f)
    data = build_labelled_data(c, train_tf, val_tf)
    args = classifier_args(timm_args(c), data.num_classes, c.enhancer.drop_path, f.global_pool)
    net = Classifier(args, start_weights(c.enhancer, source))
    if source is not None:
        load_backbone_into(net.backbone, source.state, str(source.path))
    model = SupervisedModel(net, build_mixup(f, data.num_classes), f.smoothing)
    return SupervisedTask("finetune", model, data, cfg, source, f.layer_decay)


def run_supervised(task: SupervisedTask, cfg: DictConfig) -> FitResult:
    trainer = Trainer(task, cfg)
    result = trainer.fit()
    if trainer.dist.is_main and result.interrupted:
        print_resume_hint(result, task.kind)  # finetune or linprobe
    return result


def finetune(cfg: DictConfig) -> FitResult:
    return run_supervised(build_finetune_task(cfg), cfg)
