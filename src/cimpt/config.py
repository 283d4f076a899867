"""Typed, layered configuration: defaults <- YAML file <- ``a.b=c`` command-line overrides.

The schema is a tree of dataclasses merged with OmegaConf in struct mode, so an unknown key or
a value of the wrong type is an error that names the key. ``validate`` then checks the sizes
that must agree with each other (docs/METHOD.md step 1: the token grid must equal the enhancer's
patch grid) before any work starts. The merged config is written into each run directory.
Every key is documented in ``configs/defaults.yaml`` (shipped as ``cimpt/configs``); a test
keeps that file and this schema identical.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cimpt.errors import ConfigError

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


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


@dataclass
class DataConfig:
    source: str = "auto"
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


@dataclass
class MaskConfig:
    ratio: float = 0.45
    min_block: int = 0
    max_block: int = 0
    min_aspect: float = 0.3
    placement: str = "beit"


@dataclass
class TokenizerConfig:
    kind: str = "vqvae"
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
    precision: str = "fp32"


@dataclass
class GeneratorConfig:
    depth: int = 2
    embed_dim: int = 128
    num_heads: int = 4
    mlp_ratio: float = 4.0
    temperature: float = 1.0
    top_k: int = 0  # sample among the k most likely ids only; 0: all
    top_p: float = 1.0  # nucleus: the smallest set of ids holding this much probability


@dataclass
class MAEConfig:
    mask_ratio: float = 0.75
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    norm_pix_loss: bool = True


@dataclass
class SimMIMConfig:
    mask_ratio: float = 0.6
    mask_patch_size: int = 8


@dataclass
class EnhancerConfig:
    name: str = "vit_tiny_patch16_224"
    patch_size: int = 4
    drop_path: float = 0.1
    kwargs: dict[str, Any] = field(default_factory=dict)
    neck_dim: int = 256
    pretrained: str = ""


@dataclass
class LossConfig:
    enh_weight: float = 1.0
    respix_window: int = 0
    respix_residual: bool = False


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
    amp: str = "auto"
    compile: bool = False
    channels_last: bool = False
    device: str = "auto"
    deterministic: bool = True


@dataclass
class InitConfig:
    checkpoint: str = ""


@dataclass
class FinetuneConfig:
    layer_decay: float = 0.75
    global_pool: str = "avg"
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    smoothing: float = 0.1
    randaug: str = "rand-m9-mstd0.5-inc1"
    crop_scale: list[float] = field(default_factory=lambda: [0.35, 1.0])
    ema: bool = False
    ema_decay: float = 0.999


@dataclass
class EvalConfig:
    every_epochs: int = 1
    batch_size: int = 256
    knn_k: list[int] = field(default_factory=lambda: [20, 200])
    knn_temperature: float = 0.07


@dataclass
class SegmentConfig:
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


@dataclass
class RootConfig:
    seed: int = 0
    objective: str = "respix"
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


# Keys whose value is free-form (passed through to timm), so struct mode must not close them.
_OPEN_KEYS = ("enhancer.kwargs",)

_CHOICES: dict[str, tuple[str, ...]] = {
    # respix | revdet: CIM; mae | simmim | beit: the baselines of cimpt.baselines.
    "objective": ("respix", "revdet", "mae", "simmim", "beit"),
    "data.source": ("auto", "folder", "tar", "cifar10", "cifar100", "bundled"),
    "mask.placement": ("beit", "uniform"),
    "tokenizer.kind": ("vqvae", "dalle"),
    "tokenizer.precision": ("fp32", "amp"),
    "train.amp": ("auto", "bf16", "fp16", "none"),
    "finetune.global_pool": ("avg", "token"),
}


def _one_line(exc: OmegaConfBaseException, origin: str) -> str:
    """Turn an OmegaConf exception into ``<origin>: key 'a.b': reason``."""
    key = getattr(exc, "full_key", None) or "?"
    msg = str(getattr(exc, "msg", None) or exc).splitlines()[0].strip()
    if "not in" in msg or ("Key '" in msg and "not" in msg):
        msg = "unknown key" + did_you_mean(str(key))
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


def _require(ok: bool, key: str, reason: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {reason}")


def token_grid(cfg: DictConfig) -> int:
    """Side of the enhancer's patch grid, which the token grid must match (docs/METHOD.md,
    step 1)."""
    return int(cfg.data.img_size) // int(cfg.enhancer.patch_size)


def tokenizer_resolution(cfg: DictConfig) -> int:
    """Side of the tokenizer view: ``grid * tokenizer.downsample`` unless set explicitly."""
    return int(cfg.tokenizer.img_size) or token_grid(cfg) * int(cfg.tokenizer.downsample)


def _check_kwargs(kwargs: Any) -> None:
    """``enhancer.kwargs`` goes to timm, which silently drops keys whose value is null, so
    ``{embed_dim:64}`` (no space after the colon: YAML reads the key ``embed_dim:64`` with no
    value) would train the default model without a word."""
    empty = [str(k) for k, v in (kwargs or {}).items() if v is None]
    _require(
        not empty,
        "enhancer.kwargs",
        f"no value for {', '.join(repr(k) for k in empty)} (write 'key: value', with a space "
        "after the colon)",
    )
    for key, reason in _RESERVED_KWARGS.items():
        value = (kwargs or {}).get(key)
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


def _check_baselines(cfg: DictConfig) -> None:
    """Ranges of the ``mae`` / ``simmim`` keys (checked whatever the objective: a typo in a
    config shared by several arms should not wait for the arm that uses it)."""
    mae, sim = cfg.mae, cfg.simmim
    _require(0.0 < mae.mask_ratio < 1.0, "mae.mask_ratio", f"{mae.mask_ratio} must be in (0, 1)")
    _require(0.0 < sim.mask_ratio < 1.0, "simmim.mask_ratio", f"{sim.mask_ratio} must be in (0, 1)")
    _require(
        mae.decoder_dim > 0 and mae.decoder_depth > 0 and mae.decoder_heads > 0,
        "mae.decoder_dim",
        "decoder_dim, decoder_depth and decoder_heads must be positive",
    )
    _require(
        mae.decoder_dim % mae.decoder_heads == 0,
        "mae.decoder_dim",
        f"{mae.decoder_dim} is not divisible by mae.decoder_heads={mae.decoder_heads}",
    )
    if cfg.objective == "simmim":
        p, mp, size = cfg.enhancer.patch_size, sim.mask_patch_size, cfg.data.img_size
        _require(
            mp > 0 and mp % p == 0 and size % mp == 0,
            "simmim.mask_patch_size",
            f"{mp} must be a multiple of enhancer.patch_size={p} that divides data.img_size={size}",
        )


def validate(cfg: DictConfig) -> None:
    """Check choices, ranges and sizes that must agree; one line per failure."""
    for key, choices in _CHOICES.items():
        value = OmegaConf.select(cfg, key)
        _require(value in choices, key, f"'{value}' is not one of {', '.join(choices)}")
    _validate_data(cfg)
    _require(0.0 < cfg.mask.ratio < 1.0, "mask.ratio", "must be in (0, 1)")
    _require(cfg.mask.min_aspect > 0, "mask.min_aspect", "must be positive")
    _check_baselines(cfg)
    _validate_tokenizer(cfg)
    _validate_generator(cfg)
    _validate_run(cfg.run)
    _validate_train(cfg)
    _validate_eval(cfg)
    _require(
        cfg.resume in ("", "auto") or Path(cfg.resume).exists(),
        "resume",
        f"'{cfg.resume}' is neither 'auto' nor an existing checkpoint",
    )


def _validate_data(cfg: DictConfig) -> None:
    d = cfg.data
    _require(d.img_size > 0, "data.img_size", "must be positive")
    _require(cfg.enhancer.patch_size > 0, "enhancer.patch_size", "must be positive")
    _require(cfg.enhancer.neck_dim > 0, "enhancer.neck_dim", "must be positive")
    _require(
        d.img_size % cfg.enhancer.patch_size == 0,
        "data.img_size",
        f"{d.img_size} is not divisible by enhancer.patch_size={cfg.enhancer.patch_size}",
    )
    _require(
        len(d.crop_scale) == 2 and 0 < d.crop_scale[0] <= d.crop_scale[1] <= 1,
        "data.crop_scale",
        "must be [min, max] with 0 < min <= max <= 1",
    )
    _require(
        len(d.crop_ratio) == 2 and 0 < d.crop_ratio[0] <= d.crop_ratio[1],
        "data.crop_ratio",
        "must be [min, max] with 0 < min <= max",
    )
    _require(len(d.mean) == 3 and len(d.std) == 3, "data.mean", "mean and std need 3 values")
    _require(all(s > 0 for s in d.std), "data.std", "must be positive")
    _require(0.0 <= d.hflip <= 1.0, "data.hflip", "must be in [0, 1]")
    _require(0.0 < d.label_fraction <= 1.0, "data.label_fraction", "must be in (0, 1]")
    _require(d.num_workers >= 0, "data.num_workers", "must be >= 0")


def _validate_tokenizer(cfg: DictConfig) -> None:
    _require(cfg.tokenizer.vocab_size >= 2, "tokenizer.vocab_size", "must be >= 2")
    _require(
        cfg.tokenizer.downsample in (1, 2, 4, 8, 16),
        "tokenizer.downsample",
        "must be a power of two from 1 to 16",
    )
    tok_size, down, grid = cfg.tokenizer.img_size, cfg.tokenizer.downsample, token_grid(cfg)
    _require(
        tok_size == 0 or tok_size == grid * down,
        "tokenizer.img_size",
        f"{tok_size} / downsample {down} gives a {tok_size // down}x{tok_size // down} token "
        f"grid, but the enhancer's patch grid is {grid}x{grid} "
        "(data.img_size / enhancer.patch_size); use 0 to derive it",
    )


def _validate_generator(cfg: DictConfig) -> None:
    _require(
        cfg.generator.embed_dim % cfg.generator.num_heads == 0,
        "generator.embed_dim",
        f"{cfg.generator.embed_dim} is not divisible by generator.num_heads",
    )
    _require(
        cfg.generator.temperature >= 0,
        "generator.temperature",
        f"{cfg.generator.temperature} must be >= 0 (0: argmax, the deterministic corruption)",
    )
    vocab = cfg.tokenizer.vocab_size
    _require(
        0 <= cfg.generator.top_k <= vocab,
        "generator.top_k",
        f"{cfg.generator.top_k} must be from 0 (all ids) to tokenizer.vocab_size ({vocab})",
    )
    _require(
        0 < cfg.generator.top_p <= 1,
        "generator.top_p",
        f"{cfg.generator.top_p} must be in (0, 1] (1: no nucleus cut)",
    )


def _validate_run(run: DictConfig) -> None:
    _require(run.log_every > 0, "run.log_every", "must be positive")
    _require(
        run.ckpt_every > 0,
        "run.ckpt_every",
        "must be positive (a checkpoint is always written at the end too)",
    )
    _require(run.vis_every >= 0, "run.vis_every", "must be >= 0 (0: no figures)")
    _require(run.keep_last >= 1, "run.keep_last", "must keep at least 1 checkpoint")
    _require(run.max_nan_steps >= 1, "run.max_nan_steps", "must be >= 1")


def _validate_train(cfg: DictConfig) -> None:
    t = cfg.train
    _require(t.lr >= 0, "train.lr", f"{t.lr} must be >= 0 (0: derive it from train.blr)")
    _require(t.blr > 0, "train.blr", f"{t.blr} must be positive")
    _check_kwargs(cfg.enhancer.kwargs)
    _require(t.batch_size > 0, "train.batch_size", "must be positive")
    _require(t.accum_steps > 0, "train.accum_steps", "must be positive")
    _require(
        t.batch_size % t.accum_steps == 0,
        "train.batch_size",
        f"{t.batch_size} is not divisible by train.accum_steps={t.accum_steps}",
    )
    _require(t.epochs > 0 or t.max_steps > 0, "train.epochs", "set train.epochs or train.max_steps")
    _require(t.max_steps >= 0, "train.max_steps", "must be >= 0")
    _require(len(t.betas) == 2, "train.betas", "must be [beta1, beta2]")


def _validate_eval(cfg: DictConfig) -> None:
    """Ranges of the fine-tuning and evaluation keys (``finetune.*``, ``eval.*``)."""
    f, e = cfg.finetune, cfg.eval
    _require(0.0 < f.layer_decay <= 1.0, "finetune.layer_decay", "must be in (0, 1]")
    for key in ("mixup", "cutmix"):
        _require(f[key] >= 0.0, f"finetune.{key}", "must be >= 0 (0 = off)")
    _require(0.0 <= f.mixup_prob <= 1.0, "finetune.mixup_prob", "must be in [0, 1]")
    _require(0.0 <= f.smoothing < 1.0, "finetune.smoothing", "must be in [0, 1)")
    _require(
        len(f.crop_scale) == 2 and 0 < f.crop_scale[0] <= f.crop_scale[1] <= 1,
        "finetune.crop_scale",
        "must be [min, max] with 0 < min <= max <= 1",
    )
    _require(0.0 < f.ema_decay < 1.0, "finetune.ema_decay", "must be in (0, 1)")
    _require(e.every_epochs >= 1, "eval.every_epochs", "must be >= 1")
    _require(e.batch_size >= 1, "eval.batch_size", "must be positive")
    _require(
        len(e.knn_k) >= 1 and all(k >= 1 for k in e.knn_k),
        "eval.knn_k",
        "must be a non-empty list of positive integers",
    )
    _require(e.knn_temperature > 0, "eval.knn_temperature", "must be positive")


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
    out = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(out, dict)
    return out  # type: ignore[return-value]


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if isinstance(value, DictConfig) else value


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
