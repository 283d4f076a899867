"""A module that owns a frozen image tokenizer without registering it.

CIM (Fang et al., ICLR 2023, Sec. 2) and the BEiT baseline (Bao et al., ICLR 2022) both read
the ids of a frozen tokenizer; CIM also decodes ids back to pixels. The tokenizer is never
trained, so it must stay out of ``state_dict`` (checkpoints), ``parameters()`` (optimizer,
DDP) and ``named_children`` (saved modules), yet ``.to(device)`` must move it along.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cimpt.config import RootConfig, token_grid, tokenizer_resolution
from cimpt.engine.precision import full_precision
from cimpt.errors import CimptError
from cimpt.tokenizers.base import ImageTokenizer

# fp32: the tokenizer ignores autocast; amp: it follows the run's autocast (train.amp).
TOKENIZER_PRECISIONS = ("fp32", "amp")


class FrozenTokenizerModule(nn.Module):
    """Base class: ``attach_tokenizer`` once in ``__init__``, then ``golden_tokens`` /
    ``decode_image``.

    Attributes:
        tokenizer_precision: "fp32" (default) runs the tokenizer in fp32 even inside the
            run's autocast: under bf16 its argmax ids flip (docs/BENCHMARKS.md, "Precision"),
            which would change every target derived from them. "amp" follows autocast.
        img_size: side R that ``decode_image`` resizes reconstructions to.
    """

    _tokenizer: ImageTokenizer
    tokenizer_precision: str
    img_size: int

    def attach_tokenizer(self, tokenizer: ImageTokenizer, precision: str, img_size: int) -> None:
        if precision not in TOKENIZER_PRECISIONS:
            raise CimptError(
                f"tokenizer.precision: '{precision}' is not one of "
                f"{', '.join(TOKENIZER_PRECISIONS)}"
            )
        # object.__setattr__ bypasses nn.Module's registration of submodules (module doc).
        object.__setattr__(self, "_tokenizer", tokenizer.freeze())
        self.tokenizer_precision = precision
        self.img_size = int(img_size)

    @property
    def tokenizer(self) -> ImageTokenizer:
        """The frozen tokenizer (not a submodule: absent from state_dict and parameters)."""
        return self._tokenizer

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True):
        # .to()/.cuda()/.float() go through _apply; move the unregistered tokenizer as well.
        super()._apply(fn, recurse)
        self._tokenizer._apply(fn)
        return self

    def _tokenizer_context(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.tokenizer_precision == "amp":
            return contextlib.nullcontext()
        return full_precision(device)

    @torch.no_grad()
    def golden_tokens(self, x_tok: torch.Tensor) -> torch.Tensor:
        """Tokenizer ids of the tokenizer view.

        Args:
            x_tok: ``[B, 3, T, T]`` in [0, 1].

        Returns:
            z ``[B, g, g]`` int64.
        """
        with self._tokenizer_context(x_tok.device):
            return self._tokenizer.encode(x_tok.float()).long()

    @torch.no_grad()
    def decode_image(self, ids: torch.Tensor) -> torch.Tensor:
        """Tokenizer reconstruction at the model's resolution.

        Args:
            ids: ``[B, g, g]``.

        Returns:
            ``[B, 3, R, R]`` float32 in [0, 1].
        """
        with self._tokenizer_context(ids.device):
            img = self._tokenizer.decode(ids).float()
        if img.shape[-1] != self.img_size or img.shape[-2] != self.img_size:
            # antialias only matters when shrinking; bicubic can overshoot, hence the clamp.
            img = F.interpolate(
                img,
                size=(self.img_size, self.img_size),
                mode="bicubic",
                align_corners=False,
                antialias=True,
            )
        return img.clamp(0.0, 1.0)


def check_token_grid(z: torch.Tensor, mask: torch.Tensor) -> None:
    """One-line error when the tokenizer's grid ``z [B, g, g]`` differs from ``mask``'s."""
    if z.shape != mask.shape:
        raise CimptError(
            f"token grid {tuple(z.shape[1:])} from the tokenizer does not match the mask grid "
            f"{tuple(mask.shape[1:])}: check tokenizer.downsample and enhancer.patch_size"
        )


def check_tokenizer(tokenizer: ImageTokenizer, cfg: RootConfig) -> None:
    """Start-up checks (docs/METHOD.md step 1): token grid == patch grid, vocabularies agree.

    Used by every objective that reads tokenizer ids (CIM, BEiT), before any data is read.
    """
    grid, res = token_grid(cfg), tokenizer_resolution(cfg)
    ds = int(tokenizer.downsample)
    tok_grid = res // ds
    if res % ds or tok_grid != grid:
        raise CimptError(
            f"token grid {tok_grid}x{tok_grid} != enhancer patch grid {grid}x{grid}: the "
            f"tokenizer view is {res}px with downsample {ds}, the enhancer sees "
            f"data.img_size={cfg.data.img_size} with enhancer.patch_size={cfg.enhancer.patch_size}"
        )
    if int(tokenizer.vocab_size) != cfg.tokenizer.vocab_size:
        raise CimptError(
            f"tokenizer.vocab_size: the generator would predict {cfg.tokenizer.vocab_size} ids "
            f"but the tokenizer has {tokenizer.vocab_size}"
        )
    # Probe once: a tokenizer whose real stride differs from its declared downsample fails here
    # rather than deep inside the first training step.
    device = next((p.device for p in tokenizer.parameters()), torch.device("cpu"))
    with torch.no_grad():
        ids = tokenizer.encode(torch.zeros(1, 3, res, res, device=device))
    if tuple(ids.shape) != (1, grid, grid):
        raise CimptError(
            f"token grid {tuple(ids.shape[1:])} from a {res}px image != enhancer patch grid "
            f"{grid}x{grid}: the tokenizer's downsample attribute ({ds}) is wrong"
        )
