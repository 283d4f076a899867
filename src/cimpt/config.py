"""Typed, layered configuration: defaults <- YAML file <- ``a.b=c`` command-line overrides.

The schema is a tree of dataclasses merged with OmegaConf in struct mode, so an unknown key,
a value of the wrong type or a choice outside its ``Choice`` enum is an error that names the
key. Each section checks the ranges of its own keys (``check``); ``validate`` runs those, then
checks the sizes that must agree with each other (docs/METHOD.md step 1: the token grid must
equal the enhancer's patch grid) before any work starts. The merged ``DictConfig`` is written
into each run directory; components read ``typed(cfg)``, the same values as dataclasses that
mypy checks.
Every key is documented in ``configs/defaults.yaml`` (shipped as ``cimpt/configs``); a test
keeps that file and this schema identical.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cimpt.errors import ConfigError

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def _require(ok: bool, key: str, reason: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {reason}")


class Choice(str, Enum):
    """A choice field's value: a ``str`` (so ``cfg.objective == "mae"``, JSON and f-strings see
    the plain word) whose allowed values OmegaConf checks on every merge and assignment.

    Member names equal their values: OmegaConf turns the strings of YAML files and overrides
    into members by name, and writes members back out by name.
    """

    def __str__(self) -> str:
        # Not "Objective.mae" (Enum's default): the value goes into messages and file names.
        return str(self.value)


class Objective(Choice):
    """respix | revdet: CIM; mae | simmim | beit: the baselines of cimpt.baselines."""

    respix = "respix"
    revdet = "revdet"
    mae = "mae"
    simmim = "simmim"
    beit = "beit"


class DataSource(Choice):
    auto = "auto"
    folder = "folder"
    tar = "tar"
    cifar10 = "cifar10"
    cifar100 = "cifar100"
    bundled = "bundled"


class MaskPlacement(Choice):
    beit = "beit"
    uniform = "uniform"


class TokenizerKind(Choice):
    vqvae = "vqvae"
    dalle = "dalle"


class TokenizerPrecision(Choice):
    fp32 = "fp32"
    amp = "amp"


class AmpMode(Choice):
    auto = "auto"
    bf16 = "bf16"
    fp16 = "fp16"
    none = "none"


class GlobalPool(Choice):
    avg = "avg"
    token = "token"


# Each section's ``check`` holds the range checks of its own keys; ``validate`` runs them and
# then the checks that compare keys of different sections.


@dataclass
class RunConfig:
    dir: str = "runs/cim"
    log_every: int = 10
    ckpt_every: int = 500
    keep_last: int = 2
    vis_every: int = 500
    tensorboard: bool = True
    progress: bool = True
    max_nan_steps: int = 5
    overwrite: bool = False

    def check(self) -> None:
        _require(self.log_every > 0, "run.log_every", "must be positive")
        _require(
            self.ckpt_every > 0,
            "run.ckpt_every",
            "must be positive (a checkpoint is always written at the end too)",
        )
        _require(self.vis_every >= 0, "run.vis_every", "must be >= 0 (0: no figures)")
        _require(self.keep_last >= 1, "run.keep_last", "must keep at least 1 checkpoint")
        _require(self.max_nan_steps >= 1, "run.max_nan_steps", "must be >= 1")


@dataclass
class DataConfig:
    source: DataSource = DataSource.auto
    path: str = ""
    val_path: str = ""
    cache_dir: str = "~/.cache/cimpt/datasets"
    download: bool = True
    img_size: int = 32
    crop_scale: list[float] = field(default_factory=lambda: [0.35, 1.0])
    crop_ratio: list[float] = field(default_factory=lambda: [0.75, 1.3333333])
    hflip: float = 0.5
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    num_workers: int = 2
    max_images: int = 0
    bundled_samples: int = 2048
    label_fraction: float = 1.0

    def check(self) -> None:
        _require(self.img_size > 0, "data.img_size", "must be positive")
        _check_crop_scale(self.crop_scale, "data.crop_scale")
        ratio = self.crop_ratio
        _require(
            len(ratio) == 2 and 0 < ratio[0] <= ratio[1],
            "data.crop_ratio",
            "must be [min, max] with 0 < min <= max",
        )
        _require(
            len(self.mean) == 3 and len(self.std) == 3, "data.mean", "mean and std need 3 values"
        )
        _require(all(s > 0 for s in self.std), "data.std", "must be positive")
        _require(0.0 <= self.hflip <= 1.0, "data.hflip", "must be in [0, 1]")
        _require(0.0 < self.label_fraction <= 1.0, "data.label_fraction", "must be in (0, 1]")
        _require(self.num_workers >= 0, "data.num_workers", "must be >= 0")


def _check_crop_scale(scale: list[float], key: str) -> None:
    _require(
        len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1,
        key,
        "must be [min, max] with 0 < min <= max <= 1",
    )


@dataclass
class MaskConfig:
    ratio: float = 0.45
    min_block: int = 0
    max_block: int = 0
    min_aspect: float = 0.3
    placement: MaskPlacement = MaskPlacement.beit

    def check(self) -> None:
        _require(0.0 < self.ratio < 1.0, "mask.ratio", "must be in (0, 1)")
        _require(self.min_aspect > 0, "mask.min_aspect", "must be positive")


@dataclass
class TokenizerConfig:
    kind: TokenizerKind = TokenizerKind.vqvae
    checkpoint: str = ""
    vocab_size: int = 1024
    downsample: int = 4
    img_size: int = 0
    width: int = 64
    res_blocks: int = 2
    embed_dim: int = 32
    ema_decay: float = 0.99
    commitment: float = 0.25
    dead_code_threshold: float = 0.01
    chroma_weight: float = 1.0
    precision: TokenizerPrecision = TokenizerPrecision.fp32

    def check(self) -> None:
        _require(self.vocab_size >= 2, "tokenizer.vocab_size", "must be >= 2")
        _require(
            math.isfinite(self.chroma_weight) and self.chroma_weight > 0,
            "tokenizer.chroma_weight",
            "must be positive and finite",
        )
        _require(
            self.downsample in (1, 2, 4, 8, 16),
            "tokenizer.downsample",
            "must be a power of two from 1 to 16",
        )


@dataclass
class GeneratorConfig:
    depth: int = 2
    embed_dim: int = 128
    num_heads: int = 4
    mlp_ratio: float = 4.0
    temperature: float = 1.0
    top_k: int = 0  # sample among the k most likely ids only; 0: all
    top_p: float = 1.0  # nucleus: the smallest set of ids holding this much probability

    def check(self) -> None:
        """``top_k``'s range needs the vocabulary: ``validate`` checks it."""
        _require(
            self.embed_dim % self.num_heads == 0,
            "generator.embed_dim",
            f"{self.embed_dim} is not divisible by generator.num_heads",
        )
        _require(
            self.temperature >= 0,
            "generator.temperature",
            f"{self.temperature} must be >= 0 (0: argmax, the deterministic corruption)",
        )
        _require(
            0 < self.top_p <= 1,
            "generator.top_p",
            f"{self.top_p} must be in (0, 1] (1: no nucleus cut)",
        )


@dataclass
class MAEConfig:
    """Checked whatever the objective: a typo in a config shared by several arms should not
    wait for the arm that uses it."""

    mask_ratio: float = 0.75
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    norm_pix_loss: bool = True

    def check(self) -> None:
        _require(
            0.0 < self.mask_ratio < 1.0, "mae.mask_ratio", f"{self.mask_ratio} must be in (0, 1)"
        )
        _require(
            self.decoder_dim > 0 and self.decoder_depth > 0 and self.decoder_heads > 0,
            "mae.decoder_dim",
            "decoder_dim, decoder_depth and decoder_heads must be positive",
        )
        _require(
            self.decoder_dim % self.decoder_heads == 0,
            "mae.decoder_dim",
            f"{self.decoder_dim} is not divisible by mae.decoder_heads={self.decoder_heads}",
        )


@dataclass
class SimMIMConfig:
    mask_ratio: float = 0.6
    mask_patch_size: int = 8

    def check(self) -> None:
        """``mask_patch_size`` must fit the patch and image sizes: ``validate`` checks it."""
        _require(
            0.0 < self.mask_ratio < 1.0,
            "simmim.mask_ratio",
            f"{self.mask_ratio} must be in (0, 1)",
        )


@dataclass
class EnhancerConfig:
    name: str = "vit_tiny_patch16_224"
    patch_size: int = 4
    drop_path: float = 0.1
    kwargs: dict[str, Any] = field(default_factory=dict)
    neck_dim: int = 256
    pretrained: str = ""

    def check(self) -> None:
        _require(self.patch_size > 0, "enhancer.patch_size", "must be positive")
        _require(self.neck_dim > 0, "enhancer.neck_dim", "must be positive")
        _check_kwargs(self.kwargs)


def _check_kwargs(kwargs: dict[str, Any]) -> None:
    """``enhancer.kwargs`` goes to timm, which silently drops keys whose value is null, so
    ``{embed_dim:64}`` (no space after the colon: YAML reads the key ``embed_dim:64`` with no
    value) would train the default model without a word."""
    empty = [str(k) for k, v in kwargs.items() if v is None]
    _require(
        not empty,
        "enhancer.kwargs",
        f"no value for {', '.join(repr(k) for k in empty)} (write 'key: value', with a space "
        "after the colon)",
    )
    for key, reason in _RESERVED_KWARGS.items():
        value = kwargs.get(key)
        if value is not None and not (key == "in_chans" and value == 3):
            raise ConfigError(f"config key 'enhancer.kwargs': {key}={value} {reason}")


# timm arguments cimpt sets itself; in enhancer.kwargs they would clash or fail late.
_RESERVED_KWARGS = {
    "in_chans": (
        "is not supported: every image is converted to 3-channel RGB on load (grayscale "
        "too), so the enhancer always sees 3 channels; remove it"
    ),
    "pretrained": "is not a model argument; set enhancer.pretrained (timm or a weights file)",
    "num_classes": "is set by cimpt (0 for pre-training, the data's classes for fine-tuning)",
    "img_size": "is set by cimpt; use data.img_size",
    "patch_size": "is set by cimpt; use enhancer.patch_size",
    "drop_path_rate": "is set by cimpt; use enhancer.drop_path",
}


@dataclass
class LossConfig:
    enh_weight: float = 1.0
    respix_window: int = 0
    respix_residual: bool = False

    def check(self) -> None:
        w = self.respix_window
        _require(w >= 0, "loss.respix_window", f"{w} must be >= 0 (0: patch size)")


@dataclass
class TrainConfig:
    batch_size: int = 64
    accum_steps: int = 1
    epochs: int = 10
    max_steps: int = 0
    blr: float = 1.5e-3
    lr: float = 0.0
    min_lr: float = 1e-6
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    clip_grad: float = 3.0
    amp: AmpMode = AmpMode.auto
    compile: bool = False
    channels_last: bool = False
    device: str = "auto"
    deterministic: bool = True

    def check(self) -> None:
        _require(self.lr >= 0, "train.lr", f"{self.lr} must be >= 0 (0: derive it from train.blr)")
        _require(self.blr > 0, "train.blr", f"{self.blr} must be positive")
        _require(self.batch_size > 0, "train.batch_size", "must be positive")
        _require(self.accum_steps > 0, "train.accum_steps", "must be positive")
        _require(
            self.batch_size % self.accum_steps == 0,
            "train.batch_size",
            f"{self.batch_size} is not divisible by train.accum_steps={self.accum_steps}",
        )
        _require(
            self.epochs > 0 or self.max_steps > 0,
            "train.epochs",
            "set train.epochs or train.max_steps",
        )
        _require(self.max_steps >= 0, "train.max_steps", "must be >= 0")
        _require(len(self.betas) == 2, "train.betas", "must be [beta1, beta2]")


@dataclass
class InitConfig:
    checkpoint: str = ""


@dataclass
class FinetuneConfig:
    layer_decay: float = 0.75
    global_pool: GlobalPool = GlobalPool.avg
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    smoothing: float = 0.1
    randaug: str = "rand-m9-mstd0.5-inc1"
    crop_scale: list[float] = field(default_factory=lambda: [0.35, 1.0])
    ema: bool = False
    ema_decay: float = 0.999

    def check(self) -> None:
        _require(0.0 < self.layer_decay <= 1.0, "finetune.layer_decay", "must be in (0, 1]")
        _require(self.mixup >= 0.0, "finetune.mixup", "must be >= 0 (0 = off)")
        _require(self.cutmix >= 0.0, "finetune.cutmix", "must be >= 0 (0 = off)")
        _require(0.0 <= self.mixup_prob <= 1.0, "finetune.mixup_prob", "must be in [0, 1]")
        _require(0.0 <= self.smoothing < 1.0, "finetune.smoothing", "must be in [0, 1)")
        _check_crop_scale(self.crop_scale, "finetune.crop_scale")
        _require(0.0 < self.ema_decay < 1.0, "finetune.ema_decay", "must be in (0, 1)")


@dataclass
class EvalConfig:
    every_epochs: int = 1
    batch_size: int = 256
    knn_k: list[int] = field(default_factory=lambda: [20, 200])
    knn_temperature: float = 0.07

    def check(self) -> None:
        _require(self.every_epochs >= 1, "eval.every_epochs", "must be >= 1")
        _require(self.batch_size >= 1, "eval.batch_size", "must be positive")
        _require(
            len(self.knn_k) >= 1 and all(k >= 1 for k in self.knn_k),
            "eval.knn_k",
            "must be a non-empty list of positive integers",
        )
        _require(self.knn_temperature > 0, "eval.knn_temperature", "must be positive")


@dataclass
class SegmentConfig:
    """Checked by ``cimpt segment`` only (``cimpt.seg.task.check_segment_config``): the
    default ``num_classes`` 0 is valid everywhere else."""

    num_classes: int = 0
    ignore_index: int = 255
    class_names: list[str] = field(default_factory=list)
    short_side: int = 0
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    stride: int = 0
    decoder_dim: int = 256
    vit_levels: list[float] = field(default_factory=lambda: [4.0, 2.0, 1.0, 0.5])
    layer_decay: float = 0.65
    figure_images: int = 4

    def check(self) -> None:
        k, ignore, scale = self.num_classes, self.ignore_index, self.scale_range
        checks = [
            (k >= 1, "num_classes", "set it to the number of classes (ids 0..K-1)"),
            (
                not 0 <= ignore < k,
                "ignore_index",
                f"{ignore} is a class id (0..{k - 1}); use an id outside",
            ),
            (self.short_side >= 0, "short_side", "must be >= 0 (0: as stored)"),
            (
                len(scale) == 2 and 0 < scale[0] <= scale[1],
                "scale_range",
                "must be [min, max] with 0 < min <= max",
            ),
            (self.stride >= 0, "stride", "must be >= 0 (0: 2/3 of data.img_size)"),
            (self.decoder_dim >= 1, "decoder_dim", "must be positive"),
            (len(self.vit_levels) >= 1, "vit_levels", "needs at least one level"),
            (0.0 < self.layer_decay <= 1.0, "layer_decay", "must be in (0, 1]"),
            (self.figure_images >= 0, "figure_images", "must be >= 0"),
        ]
        for ok, key, reason in checks:
            _require(ok, f"segment.{key}", reason)


@dataclass
class RootConfig:
    seed: int = 0
    objective: Objective = Objective.respix
    resume: str = ""
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    enhancer: EnhancerConfig = field(default_factory=EnhancerConfig)
    mae: MAEConfig = field(default_factory=MAEConfig)
    simmim: SimMIMConfig = field(default_factory=SimMIMConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    init: InitConfig = field(default_factory=InitConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)


def typed(cfg: DictConfig) -> RootConfig:
    """The config as plain dataclasses (``RootConfig``): what components read, so mypy checks
    every key and type. The ``DictConfig`` stays the record that is adopted into, saved and
    checkpointed; convert it after the last change a component must see."""
    out = OmegaConf.to_object(cfg)
    assert isinstance(out, RootConfig)
    return out


# Keys whose value is free-form (passed through to timm), so struct mode must not close them.
_OPEN_KEYS = ("enhancer.kwargs",)


def _one_line(exc: OmegaConfBaseException, origin: str) -> str:
    """Turn an OmegaConf exception into ``<origin>: key 'a.b': reason``."""
    key = getattr(exc, "full_key", None) or "?"
    msg = str(getattr(exc, "msg", None) or exc).splitlines()[0].strip()
    if "not in" in msg or ("Key '" in msg and "not" in msg):
        msg = "unknown key" + did_you_mean(str(key))
    choice = re.fullmatch(r"Invalid value '(.*)', expected one of \[(.*)\]", msg)
    if choice:  # a ``Choice`` field: the wording validate used before OmegaConf checked them
        msg = f"'{choice[1]}' is not one of {choice[2]}"
    return f"{origin}: config key '{key}': {msg}"


def _dotted_keys(node: Any, prefix: str = "") -> list[str]:
    if not isinstance(node, DictConfig):
        return [prefix]
    keys = [] if not prefix else [prefix]
    for name in node:
        keys += _dotted_keys(node[name], f"{prefix}.{name!s}" if prefix else str(name))
    return keys


def did_you_mean(key: str) -> str:
    """``" (did you mean 'train.max_steps'?)"`` for a near miss of a schema key, else ``""``."""
    close = difflib.get_close_matches(key, _dotted_keys(_schema()), n=1, cutoff=0.8)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _schema() -> DictConfig:
    cfg = OmegaConf.structured(RootConfig)
    OmegaConf.set_struct(cfg, True)
    for key in _OPEN_KEYS:
        OmegaConf.set_struct(OmegaConf.select(cfg, key), False)
    return cfg


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not of the form key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{item}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}"
        ) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of keys, not {type(data).__name__}"
        )
    # A file may name a base file to build on, relative to itself, or a shipped config by
    # name (so a user's own file outside the repository can build on cifar10_vit).
    base = data.pop("base", None)
    if base:
        beside = path.parent / str(base)
        merged = _read_yaml(beside if beside.exists() else resolve_config_path(str(base)))
        return _deep_merge(merged, data)
    return data


def _deep_merge(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``b`` over ``a``; free-form keys (``enhancer.kwargs``) are replaced, not merged, so a
    ResNet config built on a ViT file does not inherit the ViT's ``embed_dim``."""
    out = dict(a)
    for k, v in b.items():
        path = f"{prefix}{k}"
        merge = isinstance(v, dict) and isinstance(out.get(k), dict) and path not in _OPEN_KEYS
        out[k] = _deep_merge(out[k], v, path + ".") if merge else v
    return out


#: The configs shipped with the package (``cimpt pretrain cifar10_vit`` works anywhere).
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def packaged_configs() -> list[str]:
    """Names of the shipped configs (without ``.yaml``), sorted."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config_path(path: str | Path) -> Path:
    """A config file, run directory, or the name of a shipped config.

    An existing path is taken as it is. Otherwise ``NAME``, ``NAME.yaml`` and
    ``.../configs/NAME.yaml`` (the form the docs use, and the repository's layout before the
    configs moved into the package) name a config shipped in ``cimpt/configs``. Anything else
    is an error listing the shipped names.
    """
    p = Path(path).expanduser()
    if p.exists():
        return p
    name = p.name if p.suffix in (".yaml", ".yml") else f"{p.name}.yaml"
    if p.parent.name in ("", "configs") and (CONFIG_DIR / name).is_file():
        return CONFIG_DIR / name
    raise ConfigError(
        f"config file not found: {path} (shipped configs, usable by name: "
        f"{', '.join(packaged_configs())})"
    )


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> DictConfig:
    """Build the config: typed defaults, then the YAML file, then ``key=value`` overrides.

    ``path`` may be the name of a shipped config (``resolve_config_path``) or a run
    directory: its ``config.yaml`` (the merged config the run was
    started with) is read, so ``cimpt pretrain RUN_DIR resume=auto`` continues a run.

    Raises ``ConfigError`` with one line naming the key for unknown keys, wrong types and
    inconsistent sizes.
    """
    cfg = _schema()
    run_dir = None
    path = resolve_config_path(path) if path is not None else None
    if path is not None and Path(path).is_dir() and (Path(path) / "config.yaml").is_file():
        run_dir, path = Path(path), Path(path) / "config.yaml"  # the config it ran with
    if path is not None:
        origin = str(path)
        try:
            merged = OmegaConf.merge(cfg, OmegaConf.create(_read_yaml(Path(path))))
        except OmegaConfBaseException as exc:
            raise ConfigError(_one_line(exc, origin)) from None
        assert isinstance(merged, DictConfig)
        cfg = merged
    if run_dir is not None:
        # The directory given is the run, wherever it now lies and whatever cwd; and naming a
        # run never deletes it (a stored run.overwrite=true, as the demo's, is not inherited).
        cfg.run.dir = str(run_dir)
        cfg.run.overwrite = False
    cfg = apply_overrides(cfg, overrides)
    validate(cfg)
    return cfg


def apply_overrides(cfg: DictConfig, overrides: list[str] | tuple[str, ...]) -> DictConfig:
    """Apply ``key=value`` strings (YAML-typed values) to ``cfg`` in place; no validation.

    Not ``OmegaConf.from_dotlist``: it takes ``key`` (no ``=``) as null and ``=3`` as the
    key ``''`` without a word, and merges a mapping given for a free-form key (``_OPEN_KEYS``)
    where cimpt replaces it (tests/test_config.py).
    """
    for item in overrides:
        key, value = _parse_override(item)
        try:
            # A free-form mapping given on the command line replaces the old one entirely.
            OmegaConf.update(cfg, key, value, merge=key not in _OPEN_KEYS)
        except OmegaConfBaseException as exc:
            raise ConfigError(_one_line(exc, "override")) from None
    return cfg


def token_grid(cfg: RootConfig) -> int:
    """Side of the enhancer's patch grid, which the token grid must match (docs/METHOD.md,
    step 1)."""
    return cfg.data.img_size // cfg.enhancer.patch_size


def tokenizer_resolution(cfg: RootConfig) -> int:
    """Side of the tokenizer view: ``grid * tokenizer.downsample`` unless set explicitly."""
    return cfg.tokenizer.img_size or token_grid(cfg) * cfg.tokenizer.downsample


def validate(cfg: DictConfig) -> None:
    """Check ranges and sizes that must agree; one line per failure. (Choices need no check
    here: OmegaConf refuses a value outside a ``Choice`` on merge.)"""
    c = typed(cfg)
    sections = (c.data, c.enhancer, c.mask, c.mae, c.simmim, c.tokenizer, c.generator)
    for section in (*sections, c.loss, c.run, c.train, c.finetune, c.eval):
        section.check()
    _check_sizes(c)
    _require(
        c.resume in ("", "auto") or Path(c.resume).exists(),
        "resume",
        f"'{c.resume}' is neither 'auto' nor an existing checkpoint",
    )


def _check_sizes(c: RootConfig) -> None:
    """The checks that compare keys of different sections."""
    size, p = c.data.img_size, c.enhancer.patch_size
    _require(size % p == 0, "data.img_size", f"{size} is not divisible by enhancer.patch_size={p}")
    tok_size, down, grid = c.tokenizer.img_size, c.tokenizer.downsample, token_grid(c)
    _require(
        tok_size == 0 or tok_size == grid * down,
        "tokenizer.img_size",
        f"{tok_size} / downsample {down} gives a {tok_size // down}x{tok_size // down} token "
        f"grid, but the enhancer's patch grid is {grid}x{grid} "
        "(data.img_size / enhancer.patch_size); use 0 to derive it",
    )
    top_k, vocab = c.generator.top_k, c.tokenizer.vocab_size
    _require(
        0 <= top_k <= vocab,
        "generator.top_k",
        f"{top_k} must be from 0 (all ids) to tokenizer.vocab_size ({vocab})",
    )
    if c.objective == "simmim":
        mp = c.simmim.mask_patch_size
        _require(
            mp > 0 and mp % p == 0 and size % mp == 0,
            "simmim.mask_patch_size",
            f"{mp} must be a multiple of enhancer.patch_size={p} that divides data.img_size={size}",
        )


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def save_config(cfg: DictConfig, path: str | Path) -> None:
    """Write the merged config atomically (temporary file, then rename)."""
    from cimpt.atomic import write_text

    write_text(Path(path), to_yaml(cfg))


def from_dict(data: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Rebuild a validated config from a plain dict (as stored with a checkpoint)."""
    cfg = _schema()
    try:
        merged = OmegaConf.merge(cfg, OmegaConf.create(data))
    except OmegaConfBaseException as exc:
        raise ConfigError(_one_line(exc, "stored config")) from None
    assert isinstance(merged, DictConfig)
    cfg = merged
    cfg = apply_overrides(cfg, overrides)
    validate(cfg)
    return cfg


def to_dict(cfg: DictConfig) -> dict[str, Any]:
    """Plain values only (a ``Choice`` as its string): the dict goes into checkpoints' JSON
    metadata and is compared with stored configs."""
    out = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    assert isinstance(out, dict)
    return out  # type: ignore[return-value]


def _plain(value: Any) -> Any:
    if isinstance(value, DictConfig):
        return OmegaConf.to_container(value, enum_to_str=True)
    return str(value) if isinstance(value, Choice) else value


def adopt_value(cfg: DictConfig, key: str, value: Any, origin: object) -> bool:
    """Set ``key`` of ``cfg`` to ``value``, read from the checkpoint ``origin``; print a note
    when the config said otherwise. Returns whether the value changed.

    A checkpoint is the truth about what it holds (a user should not have to repeat a CNN's
    name or a tokenizer's widths), and ``config.yaml`` of the run then records what was used.
    """
    new, old = _plain(value), _plain(OmegaConf.select(cfg, key))
    if new != old:
        shown, was = (json.dumps(v) if isinstance(v, dict) else v for v in (new, old))
        print(f"note: {key}={shown} (from {origin}; the config said {was})")
    OmegaConf.update(cfg, key, new, merge=False)
    return new != old
