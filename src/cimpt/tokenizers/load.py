"""Build, save and load image tokenizers as plain safetensors files.

A tokenizer file is one safetensors file whose metadata names its kind and architecture
(``cimpt.tokenizers.header``), so it is rebuilt without the config of the run that made it.
Nothing is ever unpickled. ``load_tokenizer`` also accepts an engine checkpoint directory
(``model.safetensors`` with keys prefixed ``tokenizer.``) and a run directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cimpt.atomic import write_safetensors
from cimpt.config import TokenizerConfig
from cimpt.engine.checkpoint import CONFIG_KEY, config_differences, latest_checkpoint
from cimpt.errors import CimptError
from cimpt.tokenizers.base import ImageTokenizer
from cimpt.tokenizers.header import ARCH_KEY, KIND_KEY, header_metadata, read_header
from cimpt.tokenizers.vqvae import VQVAE
from cimpt.weights_io import load_weights, read_safetensors, read_safetensors_metadata, strip_prefix

KINDS = ("vqvae", "dalle")
# Fields of arch_config() that change the module; a config asking for other values is an error.
_ARCH_FIELDS = {
    "vqvae": ("vocab_size", "downsample", "width", "res_blocks", "embed_dim"),
    "dalle": ("vocab_size", "downsample"),
}
_PREFIX = "tokenizer."


def build_tokenizer(tok_cfg: TokenizerConfig) -> ImageTokenizer:
    """A fresh, trainable tokenizer from the ``tokenizer`` config section."""
    if tok_cfg.kind == "dalle":
        raise CimptError(
            "a dalle tokenizer cannot be trained here; it needs tokenizer.checkpoint "
            "(a converted DALL-E dVAE .safetensors file)"
        )
    return VQVAE(
        vocab_size=tok_cfg.vocab_size,
        downsample=tok_cfg.downsample,
        width=tok_cfg.width,
        res_blocks=tok_cfg.res_blocks,
        embed_dim=tok_cfg.embed_dim,
        ema_decay=tok_cfg.ema_decay,
        commitment=tok_cfg.commitment,
        dead_code_threshold=tok_cfg.dead_code_threshold,
        chroma_weight=tok_cfg.chroma_weight,
    )


#: Metadata key of the image side a tokenizer was trained at (its views were that large).
TRAINED_AT_KEY = "cimpt_trained_at"


def save_tokenizer(tok: ImageTokenizer, path: str | Path, trained_at: int = 0) -> Path:
    """Write weights and buffers to one safetensors file, atomically; parents are created.

    ``trained_at`` (> 0): the side of the training views, so that a run feeding the
    tokenizer views of another size can say so (``trained_at``).
    """
    arch = tok.arch_config()
    metadata = header_metadata(getattr(tok, "kind", None) or arch.get("kind", "vqvae"), arch)
    if trained_at > 0:
        metadata[TRAINED_AT_KEY] = str(int(trained_at))
    return write_safetensors(Path(path).expanduser(), tok.state_dict(), metadata)


def trained_at(path: str | Path) -> int | None:
    """The view side a cimpt tokenizer file (or run dir) was trained at; None when the file
    does not say (checkpoints, older files, the DALL-E dVAE) or is not a cimpt file."""
    p = Path(path).expanduser()
    try:
        value = read_safetensors_metadata(_resolve_file(p)[0]).get(TRAINED_AT_KEY)
    except CimptError:  # not ours to judge here: loading reports unreadable files
        return None
    return int(value) if value and value.isdigit() else None


def _resolve_file(path: Path) -> tuple[Path, str]:
    """A path given by the user -> (safetensors file, key prefix to strip)."""
    if path.is_file():
        return path, ""
    if (path / "tokenizer.safetensors").is_file():  # a run dir: the exported tokenizer
        return path / "tokenizer.safetensors", ""
    if (path / "model.safetensors").is_file():  # an engine checkpoint dir
        return path / "model.safetensors", _PREFIX
    newest = latest_checkpoint(path)
    if newest is not None:
        return newest / "model.safetensors", _PREFIX
    raise CimptError(
        f"{path} holds no tokenizer checkpoint (looked for tokenizer.safetensors, "
        "model.safetensors and checkpoints/step_*/model.safetensors)"
    )


def _header_from_run_config(file: Path) -> tuple[str | None, dict[str, Any] | None]:
    """(kind, arch) of the VQ-VAE in an engine checkpoint, from the run config it carries.

    ``cimpt tokenizer train`` checkpoints (``checkpoints/step_N/model.safetensors``) hold no
    tokenizer header, only the run config (``CONFIG_KEY``), whose ``tokenizer`` section names
    the architecture. (None, None) when the file holds no such config.
    """
    raw = read_safetensors_metadata(file).get(CONFIG_KEY)
    try:
        section = json.loads(raw).get("tokenizer") if raw else None
    except (json.JSONDecodeError, AttributeError):
        section = None
    if not isinstance(section, dict) or section.get("kind") != "vqvae":
        return None, None
    return "vqvae", {n: section[n] for n in _ARCH_FIELDS["vqvae"] if n in section}


def _read_header(file: Path) -> tuple[str, dict[str, Any]]:
    """-> (kind, arch) from the safetensors metadata (the tokenizer header, else the run
    config of an engine checkpoint), or a one-line CimptError."""
    kind, arch = read_header(file)
    if kind is None or arch is None:
        kind, arch = _header_from_run_config(file)
    if kind is None or arch is None:
        raise CimptError(
            f"{file} is not a cimpt tokenizer checkpoint (no '{KIND_KEY}'/'{ARCH_KEY}' metadata)"
        )
    if kind not in KINDS:
        raise CimptError(
            f"{file} holds an unknown tokenizer kind '{kind}' (known: {', '.join(KINDS)})"
        )
    return kind, arch


def _check_expected(file: Path, kind: str, arch: dict[str, Any], expected: Any) -> None:
    """Fail with every field where the config section and the checkpoint disagree."""
    names = [n for n in _ARCH_FIELDS[kind] if None not in (arch.get(n), getattr(expected, n, None))]
    stored = {"kind": kind, **{n: arch[n] for n in names}}
    current = {
        "kind": str(getattr(expected, "kind", kind)),
        **{n: getattr(expected, n) for n in names},
    }
    diffs = config_differences(stored, current, list(stored))
    if diffs:
        raise CimptError(f"tokenizer config does not match {file}: {'; '.join(diffs)}")


def _load_dalle(path: Path) -> ImageTokenizer:
    # Looked up at call time: a test stands in a fake dalle_io module to see the delegation.
    from cimpt.tokenizers.dalle_io import load_dalle_tokenizer

    return load_dalle_tokenizer(path).freeze()


def _is_torch_or_pickle(path: Path) -> bool:
    """A torch.save zip archive or a raw pickle (checked by magic bytes, nothing unpickled)."""
    with open(path, "rb") as f:
        head = f.read(2)
    return head == b"PK" or head[:1] == b"\x80"


def load_tokenizer(
    path: str | Path, expected: Any = None, kind: str | None = None
) -> ImageTokenizer:
    """Load a frozen tokenizer from a safetensors file, checkpoint dir or run dir.

    Args:
        path: a tokenizer ``.safetensors`` file; a checkpoint dir with ``model.safetensors``
            (keys prefixed ``tokenizer.``); or a run dir with ``tokenizer.safetensors``
            (preferred) or ``checkpoints/step_*/`` (the newest is used); or a folder with
            the released DALL-E ``encoder.pkl`` and ``decoder.pkl``.
        expected: a ``tokenizer`` config section; any architecture field that differs from
            the checkpoint is an error.
        kind: the configured ``tokenizer.kind``; with "dalle" a ``torch.save``d state dict of
            the dVAE is accepted too.

    Returns the tokenizer in eval mode with gradients off (``freeze()``), on the CPU.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CimptError(f"tokenizer checkpoint not found: {path}")
    if path.is_dir() and all((path / n).is_file() for n in ("encoder.pkl", "decoder.pkl")):
        # The released DALL-E pickles: dalle_io reads them with its restricted unpickler.
        if expected is not None:
            _check_expected(path, "dalle", {}, expected)
        return _load_dalle(path)
    kind = kind or (str(getattr(expected, "kind", "")) or None if expected is not None else None)
    if path.is_file() and _is_torch_or_pickle(path):
        if kind == "dalle":  # a torch.save'd dVAE state dict (read with weights_only=True)
            return _load_dalle(path)
        raise CimptError(
            f"{path} is not a cimpt tokenizer checkpoint (a pickle or torch file, not "
            "safetensors): convert the released DALL-E files once with `cimpt tokenizer "
            "convert-dalle encoder.pkl decoder.pkl dalle.safetensors` (or pass the folder "
            "holding both); a dVAE state dict loads with tokenizer.kind=dalle"
        )
    file, prefix = _resolve_file(path)
    kind, arch = _read_header(file)
    if expected is not None:
        _check_expected(file, kind, arch, expected)
    if kind == "dalle":
        return _load_dalle(file)
    kwargs = {k: v for k, v in arch.items() if k != "kind"}
    try:
        tok = VQVAE(**kwargs)
    except TypeError as exc:
        raise CimptError(f"{file} has an invalid vqvae 'arch' metadata: {exc}") from None
    tensors = read_safetensors(file)
    if any(k.startswith(prefix) for k in tensors):  # else a bare tokenizer state dict
        tensors = strip_prefix(tensors, prefix)
    load_weights(tok, tensors, file, "the vqvae tokenizer")
    return tok.freeze()
