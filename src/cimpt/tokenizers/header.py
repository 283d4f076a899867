"""The metadata of a tokenizer file: its kind and its architecture.

A tokenizer ``.safetensors`` file holds ``"cimpt_tokenizer"`` (the kind: ``vqvae`` or
``dalle``) and ``"arch"`` (JSON of ``arch_config()``), so it can be rebuilt without the
config of the run that made it (docs/DESIGN.md, items 7, 11). ``save_tokenizer`` and
``convert_dalle_pickles`` write it; ``load_tokenizer`` and ``load_dalle_tokenizer`` read it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cimpt.errors import CimptError
from cimpt.weights_io import read_safetensors_metadata

KIND_KEY = "cimpt_tokenizer"
ARCH_KEY = "arch"


def header_metadata(kind: str, arch: dict[str, Any]) -> dict[str, str]:
    """The metadata that ``read_header`` reads back."""
    return {KIND_KEY: str(kind), ARCH_KEY: json.dumps(arch)}


def read_header(file: Path) -> tuple[str | None, dict[str, Any] | None]:
    """(kind, arch) from a safetensors file's metadata, None for a key it does not hold.

    A file that is no safetensors file, or whose ``arch`` is no JSON mapping, is a one-line
    ``CimptError``.
    """
    meta = read_safetensors_metadata(file)
    arch = None
    if ARCH_KEY in meta:
        try:
            arch = json.loads(meta[ARCH_KEY])
        except json.JSONDecodeError:
            arch = None
        if not isinstance(arch, dict):
            raise CimptError(f"{file} is not a cimpt tokenizer checkpoint (unreadable 'arch')")
    return meta.get(KIND_KEY), arch
