"""The image-tokenizer interface that CIM relies on (docs/METHOD.md, "The three networks").

A tokenizer maps an image in [0, 1] to a grid of discrete visual tokens and back. During CIM
pre-training it is frozen: eval mode, no gradients, never wrapped in DDP.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn


class ImageTokenizer(nn.Module, ABC):
    """Discrete image tokenizer.

    Attributes:
        vocab_size: number of distinct token ids.
        downsample: input pixels per token along each side.
    """

    vocab_size: int
    downsample: int

    @abstractmethod
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in [0, 1] -> token ids ``[B, H/d, W/d]`` (int64, argmax)."""

    @abstractmethod
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids ``[B, h, w]`` -> images ``[B, 3, h*d, w*d]`` in [0, 1]."""

    @abstractmethod
    def arch_config(self) -> dict[str, Any]:
        """Everything needed to rebuild this module before loading its weights."""

    def freeze(self) -> ImageTokenizer:
        """Frozen use (docs/METHOD.md: the tokenizer is frozen during CIM): eval mode, no grads."""
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> ImageTokenizer:
        # A frozen tokenizer stays in eval mode even when a parent module calls .train().
        params = list(self.parameters())
        if mode and params and not any(p.requires_grad for p in params):
            mode = False
        return super().train(mode)
