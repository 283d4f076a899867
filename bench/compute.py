"""Compute ceilings and counts shared by the benchmarks: the matmul peak of a device in a
dtype, and the FLOPs of one training step (torch's FLOP counter), so that every benchmark can
report the share of the peak (MFU) a step reaches, measured in the same run."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(
    device: torch.device, n: int, reps: int = 10, dtypes: tuple[str, ...] = ("bf16", "fp32")
) -> dict[str, float]:
    """Dense n x n x n matmul rate in TFLOP/s per dtype (TF32 off), median of ``reps``.

    Measure bf16 on a CPU only where it has matrix units: emulated, one 2048-sided product
    takes about a minute."""
    out: dict[str, float] = {}
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for name in dtypes:
            dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[name]
            a = torch.randn(n, n, device=device, dtype=dtype)
            b = torch.randn(n, n, device=device, dtype=dtype)
            for _ in range(3):
                a @ b
            times = []
            for _ in range(reps):
                sync(device)
                t0 = time.perf_counter()
                a @ b
                sync(device)
                times.append(time.perf_counter() - t0)
            times.sort()
            out[f"{name}_tflops"] = 2 * n**3 / times[len(times) // 2] / 1e12
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return out


def step_flops(step: Callable[[], object]) -> int:
    """FLOPs of one call (forward + backward + optimizer) by torch's FLOP counter."""
    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())
