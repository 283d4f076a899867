"""Switching a module to eval mode for a while and back (figures, evaluations).

One context manager instead of hand-written ``was_training`` blocks: an exception inside
(a bad batch, a full disk while saving a figure) must not leave a training run in eval mode,
where dropout, drop path and BatchNorm's running statistics silently stop training.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module.eval()`` inside the block; its previous mode is put back on leaving it, also
    when the block raises. Modules that override ``train`` (a frozen tokenizer, a frozen
    linear-probe backbone) keep their own rules, as both directions go through it."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
