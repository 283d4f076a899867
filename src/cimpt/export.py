"""``cimpt export``: the enhancer alone, as a safetensors file for the plain timm model.

After pre-training the generator is thrown away (paper, Sec. 2). The exported file holds the
timm backbone's ``state_dict`` and, in its metadata, the ``timm.create_model`` arguments and
the run config, so that

    model = timm.create_model(**json.loads(meta["cimpt_timm_args"]))
    model.load_state_dict(safetensors.torch.load_file(path))

rebuilds exactly the pre-trained network (``load_exported_backbone`` does this).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import timm
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file
from torch import nn

from cimpt.atomic import write_safetensors
from cimpt.config import from_dict, to_dict
from cimpt.engine.checkpoint import (
    load_into,
    load_meta,
    load_tensors,
    read_safetensors_metadata,
    resolve_checkpoint,
)
from cimpt.errors import CimptError


def timm_args(cfg: DictConfig) -> dict[str, Any]:
    """Arguments that rebuild the enhancer backbone with ``timm.create_model``.

    A ViT also gets ``img_size`` and ``patch_size`` (its position embeddings depend on
    them); a CNN is the plain timm model of that name.
    """
    from cimpt.models.enhancer import is_vit

    kwargs = dict(OmegaConf.to_container(cfg.enhancer.kwargs, resolve=True))  # type: ignore[arg-type]
    args: dict[str, Any] = {"model_name": str(cfg.enhancer.name), "num_classes": 0, **kwargs}
    if is_vit(str(cfg.enhancer.name), kwargs):
        args.update(img_size=int(cfg.data.img_size), patch_size=int(cfg.enhancer.patch_size))
    return args


def save_enhancer(enhancer: nn.Module, cfg: DictConfig, path: str | Path) -> Path:
    """Write ``enhancer.backbone``'s weights atomically with the rebuild arguments."""
    meta = {
        "cimpt_timm_args": json.dumps(timm_args(cfg)),
        "cimpt_config": json.dumps(to_dict(cfg)),
    }
    backbone = enhancer.get_submodule("backbone")
    try:
        return write_safetensors(Path(path), backbone.state_dict(), meta)
    except OSError as exc:
        raise CimptError(f"could not write {path} ({exc.strerror or exc})") from exc


def load_exported_backbone(path: str | Path) -> nn.Module:
    """Rebuild the timm model from an exported file and load its weights (strict)."""
    path = Path(path)
    if not path.is_file():
        raise CimptError(f"exported enhancer not found: {path}")
    meta = read_safetensors_metadata(path)
    if "cimpt_timm_args" not in meta:
        raise CimptError(f"{path} is not an exported cimpt enhancer (no cimpt_timm_args metadata)")
    model = timm.create_model(**json.loads(meta["cimpt_timm_args"]))
    model.load_state_dict(load_file(str(path)), strict=True)
    return model


def export_command(checkpoint: str, out: str) -> Path:
    """Rebuild the enhancer from a pre-training checkpoint's saved config and export it."""
    from cimpt.models.enhancer import Enhancer

    ckpt = resolve_checkpoint(checkpoint)
    meta = load_meta(ckpt)
    if meta.get("kind") != "cim":
        raise CimptError(
            f"{ckpt} is a '{meta.get('kind')}' checkpoint; export needs a CIM pre-training one"
        )
    cfg = from_dict(meta["config"])
    e = cfg.enhancer
    enhancer = Enhancer(
        e.name, cfg.data.img_size, e.patch_size, 0.0, dict(e.kwargs), int(e.neck_dim)
    )
    load_into(enhancer, load_tensors(ckpt), "enhancer")
    return save_enhancer(enhancer, cfg, out)
