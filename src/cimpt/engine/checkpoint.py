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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from cimpt.errors import CimptError

CKPT_SUBDIR = "checkpoints"
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
        meta_str = {"cimpt_config": json.dumps(meta.get("config", {}))}
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
        reason = getattr(exc, "strerror", None) or (str(exc).splitlines() or [repr(exc)])[0]
        raise CimptError(
            f"could not write checkpoint step {step} in {root} ({reason}); "
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
    for name in (*RUN_OUTPUTS, "metrics.jsonl"):
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
    try:
        return load_file(str(ckpt / "model.safetensors"))
    except (OSError, SafetensorError) as exc:
        raise CimptError(f"{ckpt / 'model.safetensors'} is not a safetensors file ({exc})") from exc


def load_state(ckpt: Path) -> dict[str, Any]:
    path = ckpt / "state.pt"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt or foreign file
        raise CimptError(f"{path} is not a readable training state ({type(exc).__name__})") from exc


def read_safetensors_metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (OSError, SafetensorError) as exc:
        raise CimptError(f"{path} is not a safetensors file ({exc})") from exc


def _shorten(items: list[str], keep: int = 3) -> str:
    more = f" (+{len(items) - keep} more)" if len(items) > keep else ""
    return ", ".join(items[:keep]) + more


def state_dict_differences(
    own: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]
) -> list[str]:
    """What keeps ``given`` from loading into a module whose state dict is ``own``.

    Returns short phrases ("missing a, b", "unexpected c", "shape (file vs model) k [..] vs
    [..]"), long lists shortened; empty when the two fit.
    """
    missing = sorted(set(own) - set(given))
    unexpected = sorted(set(given) - set(own))
    shapes = [
        f"{k} {list(given[k].shape)} vs {list(own[k].shape)}"
        for k in sorted(set(own) & set(given))
        if given[k].shape != own[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {_shorten(missing)}")
    if unexpected:
        problems.append(f"unexpected {_shorten(unexpected)}")
    if shapes:
        problems.append(f"shape (file vs model) {_shorten(shapes)}")
    return problems


def load_into(module: nn.Module, tensors: Mapping[str, torch.Tensor], prefix: str) -> None:
    """Load the ``prefix.``-keyed tensors into ``module``; mismatches name what differs."""
    sub = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    problems = state_dict_differences(module.state_dict(), sub)
    if problems:
        raise CimptError(
            f"checkpoint weights do not fit the '{prefix}' model: {'; '.join(problems)}"
        )
    module.load_state_dict(sub, strict=True)
