"""Reading weights: safetensors files and their metadata, key prefixes, and whether they fit.

Every loader reads weights through here, so a bad file or a mismatch reads the same everywhere:
``<file> is not a safetensors file (<reason>)`` and ``weights of <origin> do not fit <target>:
missing ..; unexpected ..; shape (file vs model) ..``. Nothing is unpickled.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from cimpt.errors import CimptError, first_line


def _not_safetensors(path: Path, exc: BaseException) -> CimptError:
    return CimptError(f"{path} is not a safetensors file ({first_line(exc)})")


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, on the CPU; a one-line error for any other file."""
    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise _not_safetensors(path, exc) from None


def read_safetensors_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors file (empty when it has none), tensors unread."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (OSError, SafetensorError) as exc:
        raise _not_safetensors(path, exc) from None


def strip_prefix(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose key starts with ``prefix`` (e.g. ``"enhancer.backbone."``), without it."""
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


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


def check_fits(
    own: Mapping[str, torch.Tensor],
    given: Mapping[str, torch.Tensor],
    origin: object,
    target: str,
    what: str = "",
) -> None:
    """One-line error naming every difference when ``given`` does not fit ``own``: the
    weights of ``origin`` (a file) into ``target`` ("the vqvae tokenizer"), the line headed
    by ``what`` (a config key such as "init.checkpoint") when given."""
    problems = state_dict_differences(own, given)
    if problems:
        head = f"{what}: " if what else ""
        raise CimptError(f"{head}weights of {origin} do not fit {target}: {'; '.join(problems)}")


def load_weights(
    module: nn.Module, tensors: Mapping[str, torch.Tensor], origin: object, target: str
) -> None:
    """Load ``tensors`` into ``module`` strictly, after ``check_fits`` has named any mismatch."""
    check_fits(module.state_dict(), tensors, origin, target)
    module.load_state_dict(tensors, strict=True)
