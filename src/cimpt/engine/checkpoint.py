"""Checkpoints as plain data (docs/DESIGN.md lesson 7), written atomically, last k kept.

Layout of one checkpoint, ``<run.dir>/checkpoints/step_00000500/``:

- ``model.safetensors``: the weights of every saved module, keys prefixed by the module's
  name (``generator.``, ``enhancer.``, ``tokenizer.``); metadata holds the run config.
- ``state.pt``: optimizer, grad scaler, RNG states, step, epoch and data position, written
  with ``torch.save`` and read back with ``weights_only=True`` (no code execution).
- ``meta.json``: step, epoch, kind and the merged config, readable without torch.

The directory is first written under a temporary name and then renamed, so a crash or a
full disk never leaves a half-written checkpoint where ``resume=auto`` would find it, and
the previous checkpoint stays intact.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from cimpt.engine.environment import ENVIRONMENT_FILE
from cimpt.errors import CimptError, first_line
from cimpt.weights_io import load_weights, read_safetensors, strip_prefix

CKPT_SUBDIR = "checkpoints"
#: safetensors metadata key of the run config in every checkpoint and exported model.
CONFIG_KEY = "cimpt_config"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def module_tensors(modules: Mapping[str, nn.Module]) -> dict[str, torch.Tensor]:
    """Flatten ``{name: module}`` into ``{name.param: tensor}`` on CPU, contiguous, unshared."""
    out: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            out[f"{name}.{key}"] = value.detach().to("cpu").contiguous().clone()
    return out


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    tensors: Mapping[str, torch.Tensor],
    state: Mapping[str, Any],
    meta: Mapping[str, Any],
    keep_last: int = 2,
) -> Path:
    """Write ``checkpoints/step_<step>/`` atomically and prune all but the newest ``keep_last``.

    On any I/O error (a full disk, say) the temporary directory is removed, the earlier
    checkpoints are untouched, and a ``CimptError`` says what happened.
    """
    root = Path(run_dir) / CKPT_SUBDIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-step_{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        meta_str = {CONFIG_KEY: json.dumps(meta.get("config", {}))}
        save_file(dict(tensors), str(tmp / "model.safetensors"), metadata=meta_str)
        torch.save(dict(state), tmp / "state.pt")
        (tmp / "meta.json").write_text(json.dumps(dict(meta), indent=1, default=str))
        for f in tmp.iterdir():
            _fsync_file(f)
        _fsync_dir(tmp)
        if final.exists():
            # Re-saving the same step: swap so that one complete copy exists at all times.
            old = root / f".old-step_{step:08d}-{os.getpid()}"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
        _fsync_dir(root)
    except (OSError, RuntimeError) as exc:
        # torch.save reports a full disk as RuntimeError ("file write failed"), not OSError.
        shutil.rmtree(tmp, ignore_errors=True)
        raise CimptError(
            f"could not write checkpoint step {step} in {root} ({first_line(exc)}); "
            "earlier checkpoints are intact"
        ) from exc
    prune_checkpoints(root, keep_last)
    return final


def remove_stale_temporaries(run_dir: str | Path) -> list[Path]:
    """Remove what interrupted writers left in ``run_dir``: half-written checkpoint folders
    (``checkpoints/.tmp-step_*``, ``.old-step_*``) and atomic-write temporaries (``.*.tmp``).

    Call it only while holding the run directory's lock: then no live process is writing
    there, so every such file is stale (its writer was killed). Returns what was removed.
    """
    run_dir = Path(run_dir)
    ckpts = run_dir / CKPT_SUBDIR
    for old in ckpts.glob(".old-step_*"):
        # A kill between the two renames of a re-save left the old copy as the only one.
        final = ckpts / old.name[len(".old-") :].rsplit("-", 1)[0]
        if not final.exists():
            old.rename(final)
    stale = [*ckpts.glob(".tmp-step_*"), *ckpts.glob(".old-step_*")]
    stale += [p for p in run_dir.glob(".*.tmp") if p.is_file()]
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale


# Files the tasks write into a run directory when they finish (tokenizer, CIM pre-training,
# fine-tuning, evaluation).
RUN_OUTPUTS = (
    "tokenizer.safetensors",
    "tokenizer_eval.json",
    "tokenizer_recon.png",
    "enhancer.safetensors",
    "best.safetensors",
    "results.json",
    "knn.json",
)


def clear_run(run_dir: str | Path) -> None:
    """Delete what a training run writes (checkpoints, metrics, TensorBoard events, figures),
    for ``run.overwrite=true``; other files in ``run_dir`` stay."""
    run_dir = Path(run_dir)
    for name in (CKPT_SUBDIR, "tensorboard", "figures"):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    # What runs export at their end: the old run's must not pass for the new one's (the
    # tokenizer loader prefers tokenizer.safetensors over checkpoints, for one).
    for name in (*RUN_OUTPUTS, "metrics.jsonl", ENVIRONMENT_FILE):
        (run_dir / name).unlink(missing_ok=True)


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CKPT_SUBDIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found) if (p / "model.safetensors").is_file()]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def prune_checkpoints(root: Path, keep_last: int) -> None:
    if keep_last <= 0:
        return
    ckpts = list_checkpoints(root.parent)
    for old in ckpts[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a checkpoint dir, a run dir (newest) or a model file."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CimptError(f"checkpoint not found: {p}")
    if p.is_file():
        if p.name == "model.safetensors":
            return p.parent
        raise CimptError(f"{p} is not a checkpoint directory (expected step_*/ or a run dir)")
    if (p / "model.safetensors").is_file():
        return p
    newest = latest_checkpoint(p)
    if newest is None:
        raise CimptError(f"no checkpoint found in {p} (looked for {CKPT_SUBDIR}/step_*/)")
    return newest


def load_meta(ckpt: Path) -> dict[str, Any]:
    try:
        return json.loads((ckpt / "meta.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CimptError(f"{ckpt} is not a readable cimpt checkpoint (meta.json: {exc})") from exc


def load_tensors(ckpt: Path) -> dict[str, torch.Tensor]:
    """The weights of every saved module (``model.safetensors``), keys prefixed by its name."""
    return read_safetensors(ckpt / "model.safetensors")


def load_state(ckpt: Path) -> dict[str, Any]:
    path = ckpt / "state.pt"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt or foreign file
        raise CimptError(f"{path} is not a readable training state ({type(exc).__name__})") from exc


@dataclass
class RunCheckpoint:
    """A checkpoint read back: its folder, the kind of run that wrote it, the run config
    (plain dict) and the weights of every saved module (keys prefixed by its name)."""

    path: Path
    kind: str
    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]


def open_checkpoint(
    path: str | Path, kinds: Collection[str], what: str, needs: str
) -> RunCheckpoint:
    """Read the checkpoint ``path`` names (see ``resolve_checkpoint``) if a ``kinds`` run wrote it.

    ``what`` heads the error line ("export", "init.checkpoint"); ``needs`` says what it takes
    ("a CIM pre-training checkpoint"): ``<what>: <ckpt> is a '<kind>' checkpoint, not <needs>``.
    """
    ckpt = resolve_checkpoint(path)
    meta = load_meta(ckpt)
    kind = str(meta.get("kind"))
    if kind not in kinds:
        raise CimptError(f"{what}: {ckpt} is a '{kind}' checkpoint, not {needs}")
    return RunCheckpoint(ckpt, kind, dict(meta.get("config", {})), load_tensors(ckpt))


def load_modules(modules: Mapping[str, nn.Module], ckpt: RunCheckpoint) -> None:
    """Load ``{name: module}`` from ``ckpt``'s weights (the inverse of ``module_tensors``)."""
    for name, module in modules.items():
        load_weights(
            module, strip_prefix(ckpt.tensors, f"{name}."), ckpt.path, f"the '{name}' model"
        )


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(
    stored: Mapping[str, Any], current: Mapping[str, Any], keys: Sequence[str]
) -> list[str]:
    """``key: checkpoint X vs config Y`` for each key under ``keys`` where the checkpoint's
    config (or architecture) ``stored`` and this run's ``current`` differ; nested mappings are
    compared key by key (``enhancer.kwargs.depth``)."""
    a, b = _flatten(stored), _flatten(current)
    diffs = []
    for k in sorted(set(a) | set(b)):
        if any(k == p or k.startswith(p + ".") for p in keys) and a.get(k) != b.get(k):
            diffs.append(f"{k}: checkpoint {a.get(k)!r} vs config {b.get(k)!r}")
    return diffs
