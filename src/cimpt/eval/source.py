"""Where an evaluation's backbone weights come from (docs/DESIGN.md lesson 11).

Every evaluation rebuilds the network from what the file says about itself, never from the
user's config alone:

- a CIM pre-training checkpoint (``kind`` ``cim``): weights under ``enhancer.backbone.``;
- a fine-tuning or linear-probe checkpoint (``kind`` ``finetune`` / ``linprobe``): weights
  under ``model.backbone.``;
- an export (``cimpt export``: a ``.safetensors`` file with ``cimpt_timm_args``, or a folder)
  or a fine-tuning run's ``best.safetensors``.

The result is a ``BackboneSource``: the ``timm.create_model`` arguments of the headless
backbone, the run config it was made with, and its weights (classifier weights dropped).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from cimpt.config import EnhancerConfig, adopt_value, from_dict, typed
from cimpt.errors import CimptError
from cimpt.export import (
    is_export_folder,
    only_model_keys,
    open_backbone_checkpoint,
    read_exportable,
    timm_args,
)


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
    """An export (file or folder) or a fine-tuning run's ``best.safetensors``, headless."""
    try:
        item = read_exportable(path)
    except CimptError as exc:
        raise CimptError(f"init.checkpoint: {exc}") from None
    # The headless backbone of the run config: a fine-tuned export also holds a head, and
    # its classifier arguments (pooling) are the fine-tuning run's, not the backbone's.
    args = {**timm_args(typed(item.cfg)), "num_classes": 0}
    return BackboneSource(path, "export", args, item.cfg, only_model_keys(item.state, args))


def load_backbone_source(path: str | Path) -> BackboneSource:
    """Read a backbone from any of the three kinds of file (module docstring).

    Raises ``CimptError`` with one line for a missing path, a tokenizer file or checkpoint,
    or any other file that holds no enhancer.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise CimptError(f"init.checkpoint: {p} does not exist")
    if (p.is_file() and p.suffix == ".safetensors" and p.name != "model.safetensors") or (
        p.is_dir() and is_export_folder(p)
    ):
        return _from_export(p)
    ckpt, state = open_backbone_checkpoint(p, "init.checkpoint")
    cfg = from_dict(ckpt.config)
    args = {**timm_args(typed(cfg)), "num_classes": 0}
    return BackboneSource(ckpt.path, ckpt.kind, args, cfg, only_model_keys(state, args))


#: Config keys that define the backbone a checkpoint holds.
ARCH_KEYS = ("enhancer.name", "enhancer.patch_size", "enhancer.kwargs", "data.img_size")


def adopt_architecture(
    cfg: DictConfig, source: BackboneSource, keep: tuple[str, ...] = ()
) -> list[str]:
    """Copy the keys that define the backbone from the source's config into ``cfg``
    (``adopt_value``: one note per key whose value changes); returns those keys."""
    keys = [k for k in ARCH_KEYS if k not in keep]
    new = {k: OmegaConf.select(source.config, k) for k in keys}
    return [k for k in keys if adopt_value(cfg, k, new[k], source.path)]


def resolve_init(cfg: DictConfig, keep: tuple[str, ...] = ()) -> BackboneSource | None:
    """``init.checkpoint`` read and its architecture adopted into ``cfg`` (None: scratch).

    ``keep``: architecture keys the config decides (segmentation keeps ``data.img_size``,
    its crop size: a ViT is rebuilt at that size and its position embeddings resampled).
    """
    if not cfg.init.checkpoint:
        return None
    source = load_backbone_source(cfg.init.checkpoint)
    adopt_architecture(cfg, source, keep)
    return source


def adopt_from_init(cfg: DictConfig, what: str) -> BackboneSource | None:
    """``init.checkpoint`` read and adopted into ``cfg``, or None with a note that ``what``
    runs on ``enhancer.pretrained``'s weights or a randomly initialized backbone."""
    if not cfg.init.checkpoint:
        start = (
            f"the weights of enhancer.pretrained={cfg.enhancer.pretrained}"
            if cfg.enhancer.pretrained
            else "a randomly initialized backbone"
        )
        print(f"note: init.checkpoint is empty; {what} {start}")
    return resolve_init(cfg)


def init_record(e: EnhancerConfig, source: BackboneSource | None) -> dict[str, str]:
    """``init`` and ``init_kind`` of a results file: the checkpoint, ``enhancer.pretrained``
    (when init.checkpoint is empty) or ``scratch``."""
    if source is not None:
        return {"init": str(source.path), "init_kind": str(source.kind)}
    if e.pretrained:
        return {"init": f"enhancer.pretrained={e.pretrained}", "init_kind": "pretrained"}
    return {"init": "scratch", "init_kind": "scratch"}
