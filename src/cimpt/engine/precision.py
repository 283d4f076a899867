"""Which floating-point precision a job computes in, chosen once per run.

``train.amp=auto`` means bf16 autocast where the hardware has bf16 matrix units and fp32
elsewhere:

* CUDA: bf16 where the GPU supports it (Ampere and later), else fp32.
* CPU: bf16 only where the processor multiplies bf16 natively: Intel AMX (``amx_bf16``) or
  AVX512-BF16 (``avx512_bf16``: AMD Zen 4 and later, Intel Cooper Lake). Elsewhere oneDNN
  emulates bf16 matrix products and a CIM step runs many times *slower* than in fp32, so
  bf16 there would be a trap, not a speed-up. Measured in docs/BENCHMARKS.md, "Precision":
  1.5x on an AMX Xeon, 1.3x on an AVX512-BF16 EPYC, 0.06x on an EPYC without either.
* other devices (MPS, ...): fp32.

The frozen tokenizer is not affected by this choice: ``tokenizer_precision`` keeps it in fp32
unless asked otherwise, because bf16 rounding flips some of its argmax token ids.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

import torch

# Keys of ``train.amp`` and what they mean; "auto" is resolved by ``resolve_amp``.
_FIXED = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}


@functools.lru_cache(maxsize=1)
def cpu_bf16_units() -> str | None:
    """This CPU's native bf16 matrix instructions: ``"AMX"``, ``"AVX512-BF16"`` or ``None``.

    torch's own probes are used where they exist (the AMX one also checks that the OS enabled
    the tiles); otherwise the ``amx_bf16`` / ``avx512_bf16`` flags of ``/proc/cpuinfo``.
    """
    flags = _cpu_flags()
    amx = _probe("_is_amx_tile_supported", "amx_bf16" in flags) and "amx_bf16" in flags
    if amx:
        return "AMX"
    if _probe("_is_avx512_bf16_supported", "avx512_bf16" in flags):
        return "AVX512-BF16"
    return None


def _probe(name: str, fallback: bool) -> bool:
    """``torch.cpu.<name>()`` where torch has it, else ``fallback``."""
    probe = getattr(torch.cpu, name, None)
    if callable(probe):
        try:
            return bool(probe())
        except RuntimeError:
            pass
    return fallback


def cpuinfo_field(key: str) -> str:
    """The value of the first ``key`` line of ``/proc/cpuinfo``, e.g. ``"model name"`` or
    ``"flags"`` (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() == key:
            return value.strip()
    return ""


def _cpu_flags() -> set[str]:
    """The ``flags`` of ``/proc/cpuinfo`` (empty where there is none)."""
    return set(cpuinfo_field("flags").split())


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` on ``device`` (``None``: fp32, no autocast)."""
    if amp != "auto":
        return _FIXED[amp]
    if device.type == "cuda":
        # Without bf16 (before Ampere) fp32: fp16 needs loss scaling, whose skipped overflow
        # steps the NaN guard would count; ask for train.amp=fp16 explicitly there.
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu" and cpu_bf16_units():
        return torch.bfloat16
    return None


def amp_name(dtype: torch.dtype | None) -> str:
    """``"bf16"``, ``"fp16"`` or ``"fp32"`` (``None``: no autocast) for an autocast dtype."""
    if dtype is None:
        return "fp32"
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))


def describe(dtype: torch.dtype | None, device: torch.device) -> str:
    """A short start-up line, e.g. ``bf16 autocast (CPU with AMX)``."""
    if dtype is None:
        return f"fp32 ({device.type})"
    units = cpu_bf16_units() if device.type == "cpu" else None
    name = amp_name(dtype)
    where = f"CPU with {units}" if units else device.type
    return f"{name} autocast ({where})"


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``dtype``, or a no-op context when ``dtype`` is ``None``."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@contextlib.contextmanager
def full_precision(device: torch.device) -> Iterator[None]:
    """Turn any enclosing autocast off: everything inside computes in the inputs' dtype."""
    if device.type in ("cpu", "cuda"):
        with torch.autocast(device.type, enabled=False):
            yield
    else:
        yield


def choose_attention(
    model: torch.nn.Module, device: torch.device, dtype: torch.dtype | None
) -> int:
    """Pick the attention kernel of timm's attention modules for this device and dtype.

    On a CPU under bf16 autocast, torch's fused CPU attention (flash) has a slow backward:
    on an AMX Xeon it took 40 % of a CIM step at width 192, five times its fp32 time
    (docs/BENCHMARKS.md, "Precision"). timm's explicit form (``q @ k^T``, softmax, ``@ v``)
    runs its matrix products on the AMX tiles instead, so it is chosen there; everywhere
    else timm's default (fused) stays. Returns the number of modules switched.
    """
    if not (device.type == "cpu" and dtype == torch.bfloat16):
        return 0
    switched = 0
    for module in model.modules():
        if getattr(module, "fused_attn", None) is True:
            module.fused_attn = False  # type: ignore[assignment]  # a plain bool in timm
            switched += 1
    return switched
