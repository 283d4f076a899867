"""``cimpt export``: a trained network alone, as the plain timm model with its preprocessing.

After pre-training the generator is thrown away (paper, Sec. 2); after fine-tuning the
classifier is the product. ``cimpt export`` writes either network as

- one ``.safetensors`` file: the timm model's ``state_dict`` and, in its metadata, the
  ``timm.create_model`` arguments (``cimpt_timm_args``), timm's preprocessing settings
  (``cimpt_pretrained_cfg``), the class names of a classifier (``cimpt_classes``) and the run
  config (``cimpt_config``), so that

      model = timm.create_model(**json.loads(meta["cimpt_timm_args"]))
      model.load_state_dict(safetensors.torch.load_file(path))

  rebuilds exactly the trained network (``load_exported_backbone`` does this and also sets
  ``model.pretrained_cfg``, so ``timm.data.resolve_model_data_config(model)`` gives the
  training resolution and normalization);
- or a folder in timm's own layout (``config.json`` + ``model.safetensors`` + ``README.md``),
  which ``timm.create_model("local-dir:FOLDER", pretrained=True)`` loads without cimpt.

A pre-training run exports the classifier-free backbone; a fine-tuning run exports the
backbone with its classifier head (``num_classes`` = its classes); a linear-probe run exports
its frozen backbone (the BatchNorm + linear probe is no timm model). Local paths of the run
(data, tokenizer, run directory) are blanked in every exported config: they mean nothing on
another machine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from omegaconf import DictConfig
from torch import nn

from cimpt.atomic import write_json, write_safetensors, write_text
from cimpt.config import DataConfig, RootConfig, from_dict, to_dict, typed
from cimpt.engine.checkpoint import CONFIG_KEY, RunCheckpoint, open_checkpoint
from cimpt.errors import CimptError
from cimpt.models.weights import classifier_keys
from cimpt.weights_io import (
    load_weights,
    read_safetensors,
    read_safetensors_metadata,
    strip_prefix,
)

#: Names of timm's folder layout (``timm.models._hub``): weights and config.
FOLDER_WEIGHTS = "model.safetensors"
FOLDER_CONFIG = "config.json"
#: The best weights of a fine-tuning run (``cimpt.eval.finetune.BEST_FILE``).
BEST_FILE = "best.safetensors"
#: Config keys that hold local paths; blanked in exports (module docstring).
PATH_KEYS = (
    "resume",
    "run.dir",
    "data.path",
    "data.val_path",
    "data.cache_dir",
    "tokenizer.checkpoint",
    "init.checkpoint",
    "enhancer.pretrained",
)
#: Checkpoint kind -> key prefix of the timm backbone's weights in ``model.safetensors``.
BACKBONE_PREFIX = {
    "cim": "enhancer.backbone.",
    "finetune": "model.backbone.",
    "linprobe": "model.backbone.",
}


def timm_args(cfg: RootConfig) -> dict[str, Any]:
    """Arguments that rebuild the enhancer backbone with ``timm.create_model``.

    A ViT also gets ``img_size`` and ``patch_size`` (its position embeddings depend on
    them); a CNN is the plain timm model of that name.
    """
    from cimpt.models.enhancer import is_vit

    e = cfg.enhancer
    args: dict[str, Any] = {"model_name": e.name, "num_classes": 0, **e.kwargs}
    if is_vit(e.name, e.kwargs):
        args.update(img_size=cfg.data.img_size, patch_size=e.patch_size)
    return args


def pretrained_cfg(d: DataConfig, num_classes: int) -> dict[str, Any]:
    """timm's preprocessing settings of a network trained on ``d`` (the ``data`` section).

    The held-out view of every cimpt evaluation (``EvalTransform``): bicubic resize of the
    shorter side to ``data.img_size``, center crop (crop_pct 1), ``data.mean``/``data.std``.
    ``url`` and ``hf_hub_id`` are blanked so the released weights of the timm name are never
    mistaken for these.
    """
    size = d.img_size
    return {
        "input_size": [3, size, size],
        "mean": list(d.mean),
        "std": list(d.std),
        "interpolation": "bicubic",
        "crop_pct": 1.0,
        "crop_mode": "center",
        "num_classes": int(num_classes),
        "url": "",
        "hf_hub_id": "",
    }


def _timm_overlay(pcfg: dict[str, Any]) -> dict[str, Any]:
    """JSON lists back to the tuples timm's data config expects."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in pcfg.items()}


def portable_config(cfg: DictConfig) -> dict[str, Any]:
    """The run config as a dict with its local paths blanked (``PATH_KEYS``)."""
    out = to_dict(cfg)
    for key in PATH_KEYS:
        *parents, leaf = key.split(".")
        node: Any = out
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict) and leaf in node:
            node[leaf] = ""
    return out


@dataclass
class Exportable:
    """A timm model's weights with everything that rebuilds and feeds it.

    Attributes:
        state: the timm model's ``state_dict``.
        args: ``timm.create_model`` keyword arguments (``num_classes`` 0 for a backbone).
        cfg: the run config the weights were trained with.
        classes: class names of a classifier's outputs (empty for a backbone).
        kind: ``cim``, ``finetune``, ``linprobe`` or ``export`` (what it was read from).
    """

    state: dict[str, torch.Tensor]
    args: dict[str, Any]
    cfg: DictConfig
    classes: list[str] = field(default_factory=list)
    kind: str = "cim"

    def metadata(self) -> dict[str, str]:
        return {
            "cimpt_timm_args": json.dumps(self.args),
            "cimpt_pretrained_cfg": json.dumps(
                pretrained_cfg(typed(self.cfg).data, int(self.args.get("num_classes", 0)))
            ),
            "cimpt_classes": json.dumps(self.classes),
            "cimpt_kind": self.kind,
            CONFIG_KEY: json.dumps(portable_config(self.cfg)),
        }


def save_enhancer(enhancer: nn.Module, cfg: DictConfig, path: str | Path) -> Path:
    """Write ``enhancer.backbone``'s weights atomically with the rebuild arguments."""
    backbone = enhancer.get_submodule("backbone")
    return write_export_file(Exportable(backbone.state_dict(), timm_args(typed(cfg)), cfg), path)


def write_export_file(item: Exportable, path: str | Path) -> Path:
    """One ``.safetensors`` file (module docstring), atomically."""
    try:
        return write_safetensors(Path(path), item.state, item.metadata())
    except OSError as exc:
        raise CimptError(f"could not write {path} ({exc.strerror or exc})") from exc


_METHODS = {
    "respix": "Corrupted Image Modeling, RESPIX (Fang et al., ICLR 2023)",
    "revdet": "Corrupted Image Modeling, REVDET (Fang et al., ICLR 2023)",
    "mae": "MAE (He et al., CVPR 2022)",
    "simmim": "SimMIM (Xie et al., CVPR 2022)",
    "beit": "BEiT (Bao et al., ICLR 2022)",
}


def _method_name(cfg: DictConfig) -> str:
    """The pre-training method of a run (its ``objective``), as a model card names it."""
    objective = str(cfg.get("objective", "respix"))
    return _METHODS.get(objective, f"objective {objective}")


def _model_card(item: Exportable, folder: Path) -> str:
    """A short README: what the model is, how it was trained, how to load it."""
    pcfg = pretrained_cfg(typed(item.cfg).data, int(item.args.get("num_classes", 0)))
    what = (
        f"a {len(item.classes)}-class classifier ({', '.join(item.classes[:10])}"
        f"{', ...' if len(item.classes) > 10 else ''})"
        if item.args.get("num_classes")
        else "a classifier-free backbone (pooled features)"
    )
    trained = {
        "cim": f"pre-trained with {_method_name(item.cfg)} by cimpt",
        "finetune": "CIM-pre-trained (or from scratch) and fine-tuned by cimpt",
        "linprobe": "the frozen backbone of a cimpt linear probe",
    }.get(item.kind, "exported by cimpt")
    extra = {k: v for k, v in item.args.items() if k != "model_name"}
    return (
        "---\ntags:\n- image-classification\n- timm\n- cimpt\nlibrary_name: timm\n---\n"
        f"# {folder.name}\n\n"
        f"`{item.args['model_name']}` ({extra}), {what}, {trained}.\n\n"
        f"Input: {pcfg['input_size'][1]} px RGB, bicubic resize of the shorter side and "
        f"center crop, normalized with mean {pcfg['mean']} and std {pcfg['std']}.\n\n"
        "```python\nimport timm\n"
        f'model = timm.create_model("local-dir:{folder.name}", pretrained=True)\n'
        "cfg = timm.data.resolve_model_data_config(model)\n"
        "transform = timm.data.create_transform(**cfg)\n```\n\n"
        "Or with cimpt: `cimpt.export.load_exported_backbone(FOLDER)`. `config.json` follows "
        "timm's layout; the weights also carry cimpt's metadata (`cimpt_config`: the training "
        "config, local paths blanked).\n"
    )


def write_export_folder(item: Exportable, folder: str | Path) -> Path:
    """timm's folder layout: ``config.json``, ``model.safetensors``, ``README.md``."""
    folder = Path(folder)
    num_classes = int(item.args.get("num_classes", 0))
    pcfg = pretrained_cfg(typed(item.cfg).data, num_classes)
    for key in ("url", "hf_hub_id"):  # not meaningful in a file; timm fills in the source
        pcfg.pop(key)
    if item.classes:
        pcfg["label_names"] = list(item.classes)
    config = {
        "architecture": item.args["model_name"],
        "num_classes": num_classes,
        "pretrained_cfg": pcfg,
        "model_args": {k: v for k, v in item.args.items() if k not in ("model_name",)},
    }
    try:
        write_export_file(item, folder / FOLDER_WEIGHTS)
        write_json(folder / FOLDER_CONFIG, config)
        write_text(folder / "README.md", _model_card(item, folder))
    except OSError as exc:
        raise CimptError(f"could not write {folder} ({exc.strerror or exc})") from exc
    return folder


def _head_weight_key(args: dict[str, Any]) -> str:
    """State-dict key of the classifier weight of the timm model ``args`` describe."""
    with torch.device("meta"):
        model: Any = timm.create_model(pretrained=False, **{**args, "num_classes": 1})
    for key in sorted(classifier_keys(model)):
        if key.endswith(".weight"):
            return key
    raise CimptError(f"'{args['model_name']}' has no classifier head to export")


def _classifier(state: dict[str, torch.Tensor], cfg: DictConfig, classes: list[str]) -> Exportable:
    """A fine-tuned Classifier's timm model (its ``backbone.`` weights, prefix removed)."""
    from cimpt.eval.classifier import classifier_args

    c = typed(cfg)
    args = classifier_args(timm_args(c), 1, 0.0, c.finetune.global_pool)
    args.pop("drop_path_rate")  # a training-time setting; timm's default (0) is inference
    key = _head_weight_key(args)
    if key not in state:
        raise CimptError(f"the fine-tuned weights hold no classifier '{key}'")
    args["num_classes"] = int(state[key].shape[0])
    return Exportable(state, args, cfg, classes, "finetune")


def _headless(state: dict[str, torch.Tensor], cfg: DictConfig, kind: str) -> Exportable:
    """The backbone without any head (pre-training, linear probe)."""
    c = typed(cfg)
    args = timm_args(c)
    if kind == "linprobe":
        from cimpt.eval.classifier import classifier_args

        args = classifier_args(args, 0, 0.0, c.finetune.global_pool)
        args.pop("drop_path_rate")
    return Exportable(only_model_keys(state, args), args, cfg, [], kind)


def only_model_keys(
    state: dict[str, torch.Tensor], args: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """``state`` without what the timm model of ``args`` does not have (a classifier head).

    The model is built on the meta device: only its key names are needed, no memory.
    """
    with torch.device("meta"):
        keys = set(timm.create_model(pretrained=False, **args).state_dict())
    return {k: v for k, v in state.items() if k in keys}


def _run_classes(run_dir: Path) -> list[str]:
    """Class names from a supervised run's ``results.json`` (empty when absent)."""
    try:
        return list(json.loads((run_dir / "results.json").read_text()).get("classes", []))
    except (OSError, json.JSONDecodeError, AttributeError):
        return []


def _from_supervised_file(path: Path, meta: dict[str, str]) -> Exportable:
    """``best.safetensors`` of a fine-tuning or linear-probe run (weights under ``backbone.``)."""
    cfg = from_dict(json.loads(meta[CONFIG_KEY]))
    state = strip_prefix(read_safetensors(path), "backbone.")
    if meta.get("kind") == "linprobe":
        return _headless(state, cfg, "linprobe")
    classes = json.loads(meta.get("cimpt_classes", "[]")) or _run_classes(path.parent)
    return _classifier(state, cfg, classes)


def _from_exported_file(path: Path, meta: dict[str, str]) -> Exportable:
    """A file ``cimpt export`` (or pre-training's ``enhancer.safetensors``) wrote."""
    return Exportable(
        read_safetensors(path),
        json.loads(meta["cimpt_timm_args"]),
        from_dict(json.loads(meta[CONFIG_KEY])),
        json.loads(meta.get("cimpt_classes", "[]")),
        meta.get("cimpt_kind", "export"),
    )


def _from_file(path: Path) -> Exportable:
    meta = read_safetensors_metadata(path)
    if "cimpt_timm_args" in meta:
        return _from_exported_file(path, meta)
    if meta.get("kind") in ("finetune", "linprobe") and CONFIG_KEY in meta:
        return _from_supervised_file(path, meta)
    raise CimptError(
        f"{path} holds no cimpt network (neither an export nor a fine-tuning "
        f"{BEST_FILE}); a tokenizer file cannot be exported"
    )


def open_backbone_checkpoint(
    path: Path, what: str
) -> tuple[RunCheckpoint, dict[str, torch.Tensor]]:
    """A CIM pre-training, fine-tuning or linear-probe checkpoint and its timm model's weights
    (``BACKBONE_PREFIX`` removed); ``what`` heads the error lines (``open_checkpoint``)."""
    needs = "a CIM pre-training, fine-tuning or linear-probe checkpoint"
    ckpt = open_checkpoint(path, BACKBONE_PREFIX, what, needs)
    prefix = BACKBONE_PREFIX[ckpt.kind]
    state = strip_prefix(ckpt.tensors, prefix)
    if not state:
        raise CimptError(f"{what}: {ckpt.path} holds no weights under '{prefix}'")
    return ckpt, state


def _from_checkpoint(path: Path) -> Exportable:
    ckpt, state = open_backbone_checkpoint(path, "export")
    cfg = from_dict(ckpt.config)
    if ckpt.kind == "finetune":
        return _classifier(state, cfg, _run_classes(ckpt.path.parent.parent))
    return _headless(state, cfg, ckpt.kind)


def is_export_folder(path: Path) -> bool:
    """Whether ``path`` is a folder ``cimpt export`` wrote (timm's layout)."""
    return (path / FOLDER_CONFIG).is_file() and (path / FOLDER_WEIGHTS).is_file()


def read_exportable(path: str | Path) -> Exportable:
    """The network in any file or folder cimpt writes (see ``export_command``)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CimptError(f"not found: {p}")
    if p.is_dir() and is_export_folder(p):
        return _from_file(p / FOLDER_WEIGHTS)
    if p.is_file() and p.name != "model.safetensors":
        return _from_file(p)
    if p.is_dir() and (p / BEST_FILE).is_file() and not (p / "model.safetensors").is_file():
        # A fine-tuning run: its best epoch is the model it reports (results.json "best").
        print(f"note: exporting {p / BEST_FILE}, the best epoch; name a checkpoint for another")
        return _from_file(p / BEST_FILE)
    return _from_checkpoint(p)


def export_command(checkpoint: str, out: str) -> Path:
    """Export the network of a run, checkpoint or file to ``out``.

    ``checkpoint``: a pre-training, fine-tuning or linear-probe run directory or checkpoint,
    a fine-tuning run's ``best.safetensors``, or an earlier export (file or folder).
    ``out`` ending in ``.safetensors`` is one file; anything else is a folder in timm's
    layout (module docstring).
    """
    item = read_exportable(checkpoint)
    target = Path(out).expanduser()
    if target.suffix == ".safetensors":
        return write_export_file(item, target)
    if target.exists() and not target.is_dir():
        raise CimptError(f"export: {target} is a file; give a folder or a .safetensors name")
    return write_export_folder(item, target)


def load_exported_backbone(path: str | Path) -> nn.Module:
    """The timm model of an export (file or folder) or a fine-tuning ``best.safetensors``,
    with its weights (strict) and ``pretrained_cfg`` (input size, mean, std, classes)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CimptError(f"exported model not found: {p}")
    if p.is_dir() and not is_export_folder(p):
        raise CimptError(f"{p} is not an exported cimpt model (no {FOLDER_CONFIG})")
    item = read_exportable(p)
    num_classes = int(item.args.get("num_classes", 0))
    overlay = _timm_overlay(pretrained_cfg(typed(item.cfg).data, num_classes))
    if item.classes:
        overlay["label_names"] = tuple(item.classes)
    model = timm.create_model(pretrained=False, pretrained_cfg_overlay=overlay, **item.args)
    load_weights(model, item.state, p, f"'{item.args['model_name']}'")
    return model
