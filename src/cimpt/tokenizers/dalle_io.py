"""Safe loading of the released DALL-E dVAE files, and their conversion to safetensors.

CIM (Fang et al., ICLR 2023) uses OpenAI's pre-trained DALL-E dVAE as its frozen tokenizer.
OpenAI released it as ``encoder.pkl`` and ``decoder.pkl``: whole ``dall_e.encoder.Encoder`` /
``dall_e.decoder.Decoder`` modules written by ``torch.save``. Unpickling such a file with plain
``pickle`` (``torch.load(weights_only=False)``) can run any code the file names, so this module
never does that.

How the pickles are read (``load_dalle_pickle``):

1. **Static check.** The pickle opcodes are disassembled with ``pickletools`` (nothing is
   executed) and every global the file references is compared with a fixed allowlist: the
   ``dall_e`` classes, the ``torch.nn`` containers they are built from, torch's tensor/storage
   rebuild functions, ``torch.device``, ``collections.OrderedDict`` and ``builtins.set``. Any
   other name is refused with ``CimptError`` naming it, before anything is unpickled.
2. **Restricted unpickling.** Zip-format files (torch >= 1.6) are then loaded by torch's own
   hardened unpickler (``torch.load(weights_only=True)``), with the module classes mapped
   through ``torch.serialization.safe_globals([(stand_in, "dall_e.encoder.Encoder"), ...])``
   onto inert stand-in classes of this module. A stand-in only receives its ``__dict__``; no
   ``dall_e``, ``attrs`` or ``nn.Module`` code runs, so this works without the ``dall_e``
   package installed. We prefer this to a custom ``pickle_module=`` because the weights-only
   unpickler also restricts opcodes, not just globals, and keeps working when
   ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1`` is set (torch refuses ``pickle_module`` together with
   ``weights_only=True``). It needs ``safe_globals`` with ``(obj, name)`` pairs (torch >= 2.6).
   Legacy-format files store each module class as a persistent id, which the weights-only
   unpickler rejects, so for them ``torch.load`` gets ``pickle_module=`` a module whose
   ``Unpickler`` resolves only the allowlist (same stand-ins) and raises on anything else;
   ``weights_only=False`` is passed only because torch requires it with a custom
   ``pickle_module``, the restriction living in that unpickler.
3. **Extraction.** The state dict is gathered from the stand-ins' ``_parameters`` /
   ``_buffers`` / ``_modules``, exactly the keys ``module.state_dict()`` would give.

Converting the released files (once; the result loads without any pickle)::

    cimpt tokenizer convert-dalle encoder.pkl decoder.pkl dalle.safetensors

which calls ``convert_dalle_pickles(encoder, decoder, out)`` and writes one safetensors file
with keys ``encoder.*`` / ``decoder.*`` (our :class:`~cimpt.tokenizers.dalle.DalleTokenizer`
names) and metadata ``{"cimpt_tokenizer": "dalle", "arch": <json of arch_config()>}``. Then
use ``tokenizer.kind=dalle tokenizer.checkpoint=dalle.safetensors`` (``load_dalle_tokenizer``
also accepts the directory holding ``encoder.pkl`` + ``decoder.pkl``, or a torch state dict).
"""

from __future__ import annotations

import pickle
import pickletools
import re
import types
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from cimpt.atomic import write_safetensors
from cimpt.errors import CimptError, first_line
from cimpt.tokenizers.dalle import DalleTokenizer, state_dict_from_original
from cimpt.tokenizers.header import header_metadata, read_header
from cimpt.weights_io import load_weights, read_safetensors

_MODULE_CLASSES = (
    "dall_e.encoder.Encoder",
    "dall_e.encoder.EncoderBlock",
    "dall_e.decoder.Decoder",
    "dall_e.decoder.DecoderBlock",
    "dall_e.utils.Conv2d",
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.activation.ReLU",
    "torch.nn.modules.linear.Identity",
    "torch.nn.modules.pooling.MaxPool2d",
    "torch.nn.modules.upsampling.Upsample",
)
# Globals that torch's weights-only unpickler itself resolves to real, harmless objects.
_TORCH_GLOBALS = (
    "collections.OrderedDict",
    "builtins.set",
    "torch.device",
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
    *(f"torch.{t}Storage" for t in ("Float", "Half", "BFloat16", "Double")),
    "torch.storage.UntypedStorage",
    "torch.float32",
    "torch.float16",
    "torch.bfloat16",
    "torch.float64",
)
ALLOWED_GLOBALS = frozenset(_MODULE_CLASSES + _TORCH_GLOBALS)
_ROOT_CLASS = {"encoder": "dall_e.encoder.Encoder", "decoder": "dall_e.decoder.Decoder"}
# Python 2 module names that protocol-2 pickles (torch's default) still use.
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class _StandIn:
    """Inert object standing in for a pickled module class; it only stores its state.

    ``original_name`` is the dotted name of the class it replaces.
    """

    original_name = ""

    def __setstate__(self, state: Any) -> None:
        # pickle's BUILD passes either the __dict__ or (__dict__, slots).
        if isinstance(state, tuple) and len(state) == 2:
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"unexpected state for {self.original_name}")
        self.__dict__.update(state)


def _make_stand_ins() -> list[tuple[type, str]]:
    out = []
    for name in _MODULE_CLASSES:
        cls = type(name.rsplit(".", 1)[1], (_StandIn,), {"original_name": name})
        out.append((cls, name))
    return out


_STAND_INS = _make_stand_ins()
_STAND_IN_BY_NAME = {name: cls for cls, name in _STAND_INS}


def _normalise(module: str, name: str) -> str:
    return f"{_PY2_MODULES.get(module, module)}.{name}"


def _globals_in_pickle(data: Iterable[tuple[Any, Any, Any]]) -> Iterator[str]:
    """Dotted names of every global one pickle stream references (GLOBAL, INST, STACK_GLOBAL).

    STACK_GLOBAL (protocol >= 4) takes its names from the stack; we follow the strings pushed
    directly or through the memo, and report ``<unresolved>`` when that is not enough.
    """
    memo: dict[int, Any] = {}
    strings: list[Any] = []
    last: Any = None
    for op, arg, _ in data:
        if op.name in ("GLOBAL", "INST"):
            module, name = str(arg).split(" ", 1)
            yield _normalise(module, name)
            last = None
        elif op.name == "STACK_GLOBAL":
            ok = len(strings) >= 2 and all(isinstance(s, str) for s in strings[-2:])
            yield _normalise(strings[-2], strings[-1]) if ok else "<unresolved STACK_GLOBAL>"
            last = None
        elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(arg)] = last
        elif op.name == "MEMOIZE":
            memo[len(memo)] = last
        elif op.name in ("GET", "BINGET", "LONG_BINGET"):
            last = memo.get(int(arg))
            strings.append(last)
        elif "UNICODE" in op.name or "STRING" in op.name:
            last = arg
            strings.append(arg)
        else:
            last = None


def _referenced_globals(path: Path) -> tuple[set[str], str | None]:
    """Statically list the globals of a ``torch.save`` file (zip or legacy format).

    Returns the names found and, when the file could not be disassembled to its end, why
    (the names found up to that point are still returned, so a refusal can name them).
    """
    found: set[str] = set()
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                pkls = [n for n in zf.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
                if len(pkls) != 1:
                    return found, "no single data.pkl inside the archive"
                found.update(_globals_in_pickle(pickletools.genops(zf.read(pkls[0]))))
        else:
            # Legacy format: magic number, protocol, sys info, the object and the storage keys
            # are five consecutive pickles; raw storage bytes follow them.
            with open(path, "rb") as f:
                for _ in range(5):
                    found.update(_globals_in_pickle(pickletools.genops(f)))
    except (ValueError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        return found, first_line(exc)
    return found, None


def _refusal(path: Path, exc: BaseException) -> CimptError:
    msg = first_line(exc)
    match = re.search(r"GLOBAL (\S+)", str(exc))
    if match:
        return CimptError(
            f"refusing to load {path}: it references {match.group(1)}, "
            "which is not part of the DALL-E dVAE"
        )
    return CimptError(f"could not read {path} as a DALL-E dVAE pickle: {msg}")


class _RestrictedUnpickler(pickle.Unpickler):
    """stdlib unpickler that resolves only :data:`ALLOWED_GLOBALS` (module classes as stand-ins).

    Used for the legacy (pre-1.6, non-zip) torch format only, which torch's weights-only
    unpickler cannot read for whole modules (their classes travel as persistent ids).
    """

    def find_class(self, module: str, name: str) -> Any:
        full = _normalise(module, name)
        if full in _STAND_IN_BY_NAME:
            return _STAND_IN_BY_NAME[full]
        if full in _TORCH_GLOBALS:
            return _resolve_torch_global(full)
        raise pickle.UnpicklingError(f"GLOBAL {full} is not allowed")


def _resolve_torch_global(full: str) -> Any:
    if full == "collections.OrderedDict":
        return OrderedDict
    if full == "builtins.set":
        return set
    module, name = full.rsplit(".", 1)
    owner = (
        torch._utils
        if module == "torch._utils"
        else torch.storage
        if (module == "torch.storage")
        else torch
    )
    return getattr(owner, name)


def _restricted_pickle_module() -> types.ModuleType:
    """A ``pickle_module`` for ``torch.load`` whose ``Unpickler`` and ``load`` are restricted."""
    mod = types.ModuleType("cimpt_restricted_pickle")
    mod.Unpickler = _RestrictedUnpickler  # type: ignore[attr-defined]
    mod.load = lambda f, **kw: _RestrictedUnpickler(f, **kw).load()  # type: ignore[attr-defined]
    return mod


def _unpickle_restricted(path: Path) -> Any:
    """Unpickle a ``torch.save`` file of a module tree, module classes -> stand-ins.

    Zip format (torch >= 1.6): torch's weights-only unpickler with the stand-ins allowlisted.
    Legacy format: ``torch.load`` with our restricted ``pickle_module`` (``weights_only=False``
    is required by torch for a custom pickle module; the restriction lives in the unpickler).
    """
    try:
        if zipfile.is_zipfile(path):
            if not hasattr(torch.serialization, "safe_globals"):
                raise CimptError("reading the DALL-E pickles needs torch >= 2.6 (safe_globals)")
            with torch.serialization.safe_globals(list(_STAND_INS)):
                return torch.load(path, map_location="cpu", weights_only=True)
        with warnings.catch_warnings():
            # Legacy files carry the source of each module class; torch warns that it cannot
            # compare it with our stand-ins, which is expected.
            warnings.simplefilter("ignore")
            return torch.load(
                path,
                map_location="cpu",
                weights_only=False,
                pickle_module=_restricted_pickle_module(),
            )
    except CimptError:
        raise
    except Exception as exc:  # torch raises several types; all mean "refused or unreadable"
        raise _refusal(path, exc) from None


def _collect_state(obj: Any, prefix: str, out: dict[str, torch.Tensor], path: Path) -> None:
    """Gather ``state_dict()``-style entries of a stand-in module tree into ``out``."""
    if not isinstance(obj, _StandIn):
        raise CimptError(f"{path}: '{prefix or 'root'}' is a {type(obj).__name__}, not a module")
    state = obj.__dict__
    skip = state.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if value is None or name in skip:
                continue
            if not isinstance(value, torch.Tensor):
                raise CimptError(f"{path}: '{prefix}{name}' is not a tensor")
            out[f"{prefix}{name}"] = value.detach().contiguous()
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            _collect_state(child, f"{prefix}{name}.", out, path)


def load_dalle_pickle(path: str | Path, part: str) -> dict[str, torch.Tensor]:
    """Read a released ``encoder.pkl`` / ``decoder.pkl`` without running code from it.

    Args:
        path: the ``torch.save``d ``dall_e`` module.
        part: ``"encoder"`` or ``"decoder"`` (the class the file must hold).

    Returns:
        The module's state dict under the ORIGINAL names (``blocks.input.w``, ...), identical
        to ``module.state_dict()`` of the pickled module; map it with
        :func:`cimpt.tokenizers.dalle.state_dict_from_original`.

    Raises:
        CimptError: missing file, a global outside the allowlist (named), an unreadable file,
            or a file holding another class than the requested part.
    """
    if part not in _ROOT_CLASS:
        raise CimptError(f"DALL-E part must be 'encoder' or 'decoder', not '{part}'")
    path = Path(path)
    if not path.is_file():
        raise CimptError(f"DALL-E {part} file not found: {path}")
    found, problem = _referenced_globals(path)
    refused = sorted(found - ALLOWED_GLOBALS)
    if refused:
        raise CimptError(
            f"refusing to load {path}: it references {refused[0]}, "
            "which is not part of the DALL-E dVAE"
        )
    if problem is not None:
        raise CimptError(f"{path} is not a torch.save file: {problem}")
    root = _unpickle_restricted(path)
    held = getattr(root, "original_name", type(root).__name__)
    if held != _ROOT_CLASS[part]:
        raise CimptError(f"{path} holds a {held}, not the DALL-E {part} ({_ROOT_CLASS[part]})")
    out: dict[str, torch.Tensor] = {}
    _collect_state(root, "", out, path)
    return out


def infer_arch(sd: dict[str, torch.Tensor]) -> dict[str, int]:
    """``DalleTokenizer`` constructor arguments read off a state dict's shapes.

    ``sd`` uses our names (``encoder.blocks...weight``, ``decoder.blocks...weight``).
    """
    needed = {
        "enc_in": "encoder.blocks.input.weight",
        "enc_out": "encoder.blocks.output.conv.weight",
        "dec_in": "decoder.blocks.input.weight",
        "dec_out": "decoder.blocks.output.conv.weight",
    }
    missing = [k for k in needed.values() if k not in sd]
    if missing:
        raise CimptError(f"not a DALL-E dVAE state dict: missing {', '.join(missing)}")
    shape = {name: tuple(sd[key].shape) for name, key in needed.items()}
    if any(len(s) != 4 for s in shape.values()):
        raise CimptError("not a DALL-E dVAE state dict: its input/output convs are not 4-d")

    def blocks(part: str) -> int:
        pattern = re.compile(rf"^{part}\.blocks\.group_1\.block_(\d+)\.")
        return len({m.group(1) for k in sd if (m := pattern.match(k))})

    return {
        "vocab_size": shape["enc_out"][0],
        "encoder_hid": shape["enc_in"][0],
        "encoder_blocks": blocks("encoder"),
        "decoder_init": shape["dec_in"][0],
        "decoder_hid": shape["dec_out"][1],
        "decoder_blocks": blocks("decoder"),
        "input_channels": shape["enc_in"][1],
        "output_channels": shape["dec_out"][0] // 2,
    }


def _build(sd: dict[str, torch.Tensor], origin: str, arch: dict[str, Any] | None) -> DalleTokenizer:
    """A frozen ``DalleTokenizer`` holding ``sd``; one-line error listing any mismatch."""
    arch = infer_arch(sd) if arch is None else arch
    try:
        tok = DalleTokenizer(**arch)
    except TypeError as exc:
        raise CimptError(f"{origin}: bad DALL-E arch {arch}: {first_line(exc)}") from None
    load_weights(tok, {k: v.float() for k, v in sd.items()}, origin, f"the DALL-E dVAE {arch}")
    return tok.freeze()  # type: ignore[return-value]


def _tensors_from_pickles(
    encoder_pkl: str | Path, decoder_pkl: str | Path
) -> dict[str, torch.Tensor]:
    enc = state_dict_from_original(load_dalle_pickle(encoder_pkl, "encoder"), "encoder.")
    dec = state_dict_from_original(load_dalle_pickle(decoder_pkl, "decoder"), "decoder.")
    return {**enc, **dec}


def convert_dalle_pickles(
    encoder_pkl: str | Path, decoder_pkl: str | Path, out_safetensors: str | Path
) -> Path:
    """Convert the released ``encoder.pkl`` + ``decoder.pkl`` into one safetensors file.

    Keys are ``encoder.*`` / ``decoder.*`` (:class:`DalleTokenizer` names); metadata holds
    ``cimpt_tokenizer = "dalle"`` and ``arch`` (JSON of ``arch_config()``). The file is written
    to a temporary name and renamed, so an interrupted conversion leaves no partial file.

    Returns:
        The path of the written file.
    """
    origin = f"{encoder_pkl} + {decoder_pkl}"
    tok = _build(_tensors_from_pickles(encoder_pkl, decoder_pkl), origin, None)
    meta = header_metadata("dalle", tok.arch_config())
    return write_safetensors(Path(out_safetensors), tok.state_dict(), meta)


def _load_safetensors(path: Path) -> DalleTokenizer:
    kind, arch = read_header(path)
    if kind not in (None, "dalle"):
        raise CimptError(f"{path} holds a '{kind}' tokenizer, not a DALL-E dVAE")
    return _build(read_safetensors(path), str(path), arch)


def _load_torch_state_dict(path: Path) -> DalleTokenizer:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any refusal or parse failure: not a plain state dict
        raise CimptError(
            f"{path} is not a plain torch state dict ({first_line(exc)}); for the released "
            "encoder.pkl/decoder.pkl pass their directory or run `cimpt tokenizer convert-dalle`"
        ) from None
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CimptError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    # Accept both our names and the original ``.w`` / ``.b`` parameter names.
    return _build(state_dict_from_original(obj), str(path), None)


def load_dalle_tokenizer(path: str | Path) -> DalleTokenizer:
    """Load a frozen :class:`DalleTokenizer` (eval mode, no gradients).

    Args:
        path: a safetensors file from :func:`convert_dalle_pickles`; a directory holding the
            released ``encoder.pkl`` and ``decoder.pkl`` (read with the restricted loader);
            or a ``torch.save``d state dict with ``encoder.*`` / ``decoder.*`` keys (loaded
            with ``weights_only=True``).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CimptError(f"DALL-E tokenizer checkpoint not found: {path}")
    if path.is_dir():
        missing = [n for n in ("encoder.pkl", "decoder.pkl") if not (path / n).is_file()]
        if missing:
            raise CimptError(f"DALL-E directory {path} lacks {' and '.join(missing)}")
        sd = _tensors_from_pickles(path / "encoder.pkl", path / "decoder.pkl")
        return _build(sd, str(path), None)
    with open(path, "rb") as f:
        head = f.read(9)
    if head.startswith(b"PK") or head.startswith(b"\x80"):  # torch zip or legacy pickle
        return _load_torch_state_dict(path)
    if len(head) == 9 and head[8:9] == b"{":  # safetensors: u64 header size, then JSON
        return _load_safetensors(path)
    raise CimptError(
        f"{path} is not a DALL-E checkpoint (expected a .safetensors file, a torch state dict, "
        "or a directory with encoder.pkl and decoder.pkl)"
    )


__all__ = [
    "ALLOWED_GLOBALS",
    "convert_dalle_pickles",
    "infer_arch",
    "load_dalle_pickle",
    "load_dalle_tokenizer",
]
