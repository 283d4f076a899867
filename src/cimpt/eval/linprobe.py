"""``cimpt linprobe``: a linear classifier on frozen enhancer features (MAE's protocol).

As in MAE (He et al. 2022, linear probing): the backbone is frozen and kept in eval mode, its
pooled feature goes through a BatchNorm without affine parameters (it only normalizes
feature scales, so it is itself linear at test time) and a linear layer, the only part that
trains. MAE used LARS at large batch; here AdamW with the engine's schedule (our choice,
``configs/cifar10_linprobe.yaml`` sets weight decay 0 and no mixup/RandAugment).
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from cimpt.config import typed
from cimpt.data.checks import check_paths
from cimpt.engine.loop import FitResult
from cimpt.engine.rng import seed_model_init
from cimpt.eval.augment import build_finetune_transforms, build_mixup
from cimpt.eval.classifier import classifier_args, load_backbone_into
from cimpt.eval.finetune import SupervisedModel, SupervisedTask, run_supervised, start_weights
from cimpt.eval.labelled import build_labelled_data
from cimpt.eval.source import adopt_from_init
from cimpt.export import timm_args
from cimpt.models.weights import create_timm_model


class LinearProbe(nn.Module):
    """Frozen ``backbone`` (timm, headless) -> ``head`` = BatchNorm1d(affine=False) + Linear.

    Args:
        backbone_args: ``timm.create_model`` arguments of the headless backbone.
        num_classes: classes of the linear layer.
        global_pool: ViT pooling (``avg`` or ``token``).
        pretrained: start weights, ``enhancer.pretrained`` (``cimpt.models.weights``).
    """

    backbone: Any

    def __init__(
        self,
        backbone_args: dict[str, Any],
        num_classes: int,
        global_pool: str,
        pretrained: str = "",
    ) -> None:
        super().__init__()
        self.backbone = create_timm_model(
            pretrained, **classifier_args(backbone_args, 0, 0.0, global_pool)
        )
        self.backbone.requires_grad_(False)
        dim = int(self.backbone.num_features)
        linear = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(linear.weight, std=0.01)  # MAE's head initialization
        nn.init.zeros_(linear.bias)
        self.head = nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), linear)

    def train(self, mode: bool = True) -> LinearProbe:
        super().train(mode)
        self.backbone.eval()  # frozen: no dropout/drop path, BatchNorm statistics fixed
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, R, R] -> [B, num_classes]``."""
        with torch.no_grad():
            feats = self.backbone(x)  # pooled features, [B, C]
        return self.head(feats)


def build_linprobe_task(cfg: DictConfig) -> SupervisedTask:
    check_paths(cfg, val="required", init=True)
    seed_model_init(cfg.seed, cfg.train.deterministic)
    source = adopt_from_init(cfg, "probing")
    c = typed(cfg)  # after the checkpoint's architecture was adopted into cfg
    train_tf, val_tf = build_finetune_transforms(c.data, c.finetune)
    data = build_labelled_data(c, train_tf, val_tf)
    net = LinearProbe(
        timm_args(c), data.num_classes, c.finetune.global_pool, start_weights(c.enhancer, source)
    )
    if source is not None:
        load_backbone_into(net.backbone, source.state, str(source.path))
    model = SupervisedModel(net, build_mixup(c.finetune, data.num_classes), c.finetune.smoothing)
    return SupervisedTask("linprobe", model, data, cfg, source, layer_decay=None)


def linprobe(cfg: DictConfig) -> FitResult:
    return run_supervised(build_linprobe_task(cfg), cfg)
