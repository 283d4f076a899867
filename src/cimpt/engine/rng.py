"""Seeding and RNG snapshots, so that a resumed run continues the same random streams."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch; on CPU also ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        # Deterministic mode also fills every new tensor with NaN (a debugging aid for
        # reads of unwritten memory), a measurable share of a CIM step on CPU
        # (docs/BENCHMARKS.md); the fill is not needed for determinism.
        torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
        torch.backends.cudnn.benchmark = False


# Initial weights come from their own stream: the trainer later seeds ``seed + rank`` for
# training, and on CPU the same seed would make the first training draws (drop path, masks)
# repeat the uniforms that drew the first weights.
INIT_SEED_OFFSET = 1_000_003


def seed_model_init(seed: int, deterministic: bool = True) -> None:
    """Seed every RNG before a model is built, so that ``seed`` alone fixes the initial
    weights, whatever ran before in the process; identical on every rank."""
    seed_everything(seed + INIT_SEED_OFFSET, deterministic)


def rng_state() -> dict[str, Any]:
    """Every RNG state as tensors and plain Python values (loadable with weights_only=True)."""
    np_state: tuple[Any, ...] = tuple(np.random.get_state())
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy_keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_gauss": (int(np_state[3]), float(np_state[4])),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    has_gauss, gauss = state["numpy_gauss"]
    np.random.set_state(("MT19937", keys, state["numpy_pos"], has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
