"""Where an evaluation's backbone weights come from (DESIGN.md lesson 11).

Every evaluation rebuilds the network from what the file says about itself, never from the
user's config alone:

- a CIM pre-training checkpoint (``kind`` ``cim``): weights under ``enhancer.backbone.``;
- a fine-tuning or linear-probe checkpoint (``kind`` ``finetune`` / ``linprobe``): weights
  under ``model.backbone.``;
- an exported enhancer (``cimpt export``, a ``.safetensors`` file with ``cimpt_timm_args``).

The result is a ``BackboneSource``: the ``timm.create_model`` arguments of the headless
backbone, the run config it was made with, and its weights (classifier weights dropped).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from omegaconf import DictConfig
from safetensors import SafetensorError
from safetensors.torch import load_file

from cimpt.config import from_dict
from cimpt.engine.checkpoint import (
    load_meta,
    load_tensors,
    read_safetensors_metadata,
    resolve_checkpoint,
)
from cimpt.errors import CimptError
from cimpt.export import timm_args

#: Checkpoint kind -> key prefix of the timm backbone's weights in ``model.safetensors``.
BACKBONE_PREFIX = {
    "cim": "enhancer.backbone.",
    "finetune": "model.backbone.",
    "linprobe": "model.backbone.",
}


@dataclass
class BackboneSource:
    """A backbone to evaluate.

    Attributes:
        path: the file or checkpoint directory it was read from.
        kind: ``cim``, ``finetune``, ``linprobe`` or ``export``.
        timm_args: ``timm.create_model`` keyword arguments of the headless backbone
            (``num_classes=0``).
        config: the run config the weights were made with.
        state: backbone weights, without any classifier head.
    """

    path: Path
    kind: str
    timm_args: dict[str, Any]
    config: DictConfig
    state: dict[str, torch.Tensor]

    def describe(self) -> str:
        extra = {k: v for k, v in self.timm_args.items() if k not in ("model_name", "num_classes")}
        return f"'{self.timm_args['model_name']}' {extra}"


def _from_export(path: Path) -> BackboneSource:
    meta = read_safetensors_metadata(path)
    if "cimpt_timm_args" not in meta:
        raise CimptError(
            f"init.checkpoint: {path} is a safetensors file but not an exported cimpt "
            "enhancer (no cimpt_timm_args metadata); a tokenizer file cannot be fine-tuned"
        )
    try:
        state = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise CimptError(f"init.checkpoint: cannot read {path} ({exc})") from exc
    cfg = from_dict(json.loads(meta["cimpt_config"]))
    args = {**json.loads(meta["cimpt_timm_args"]), "num_classes": 0}
    return BackboneSource(path, "export", args, cfg, state)


def load_backbone_source(path: str | Path) -> BackboneSource:
    """Read a backbone from any of the three kinds of file (module docstring).

    Raises ``CimptError`` with one line for a missing path, a tokenizer file or checkpoint,
    or any other file that holds no enhancer.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise CimptError(f"init.checkpoint: {p} does not exist")
    if p.is_file() and p.suffix == ".safetensors" and p.name != "model.safetensors":
        return _from_export(p)
    ckpt = resolve_checkpoint(p)
    meta = load_meta(ckpt)
    kind = str(meta.get("kind"))
    if kind not in BACKBONE_PREFIX:
        raise CimptError(
            f"init.checkpoint: {ckpt} is a '{kind}' checkpoint, which holds no enhancer; "
            f"use a CIM pre-training, fine-tuning or linear-probe checkpoint"
        )
    cfg = from_dict(meta["config"])
    prefix = BACKBONE_PREFIX[kind]
    tensors = load_tensors(ckpt)
    state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    if not state:
        raise CimptError(f"init.checkpoint: {ckpt} holds no weights under '{prefix}'")
    args = {**timm_args(cfg), "num_classes": 0}
    return BackboneSource(ckpt, kind, args, cfg, _without_head(state, args))


def _without_head(state: dict[str, torch.Tensor], args: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Drop what the headless backbone does not have (a fine-tuned classifier head).

    The model is built on the meta device: only its key names are needed, no memory.
    """
    with torch.device("meta"):
        keys = set(timm.create_model(pretrained=False, **args).state_dict())
    return {k: v for k, v in state.items() if k in keys}


def architecture_mismatch(
    source: BackboneSource, cfg: DictConfig, ignore: tuple[str, ...] = ()
) -> str | None:
    """Why ``cfg`` would build another backbone than ``source`` holds (None when the same).

    ``ignore``: timm arguments allowed to differ (segmentation resizes a ViT: ``img_size``).
    """
    want = {k: v for k, v in {**timm_args(cfg), "num_classes": 0}.items() if k not in ignore}
    have = {k: v for k, v in source.timm_args.items() if k not in ignore}
    if want == have:
        return None
    keys = sorted(set(want) | set(have))
    diffs = [
        f"{k}: checkpoint {have.get(k)!r} vs config {want.get(k)!r}"
        for k in keys
        if want.get(k) != have.get(k)
    ]
    return "; ".join(diffs)


def resolve_init(cfg: DictConfig, ignore: tuple[str, ...] = ()) -> BackboneSource | None:
    """``init.checkpoint`` read and checked against the config's architecture (or None).

    ``ignore``: timm arguments that may differ (see ``architecture_mismatch``).
    """
    if not cfg.init.checkpoint:
        return None
    source = load_backbone_source(str(cfg.init.checkpoint))
    mismatch = architecture_mismatch(source, cfg, ignore)
    if mismatch:
        raise CimptError(
            f"init.checkpoint: {source.path} holds a {source.describe()} enhancer, not what "
            f"this config builds ({mismatch}); set enhancer.* and data.img_size to the "
            "checkpoint's (its config.yaml), or init.checkpoint='' for scratch"
        )
    return source


def adopt_architecture(cfg: DictConfig, source: BackboneSource) -> None:
    """Copy the keys that define the backbone from the source's config into ``cfg``.

    Used where the architecture is not the user's choice (linear probe, kNN): the checkpoint
    decides, and ``config.yaml`` of the run records what was really evaluated.
    """
    src = source.config
    for key in ("name", "patch_size", "kwargs"):
        cfg.enhancer[key] = src.enhancer[key]
    cfg.data.img_size = src.data.img_size


def adopt_from_init(cfg: DictConfig, what: str) -> BackboneSource | None:
    """``init.checkpoint`` read and adopted into ``cfg`` (linear probe, kNN), or None with a
    note that ``what`` runs on a randomly initialized backbone."""
    if not cfg.init.checkpoint:
        print(f"note: init.checkpoint is empty; {what} a randomly initialized backbone")
        return None
    source = load_backbone_source(str(cfg.init.checkpoint))
    adopt_architecture(cfg, source)
    return source
