"""The DALL-E discrete VAE (Ramesh et al., 2021) as the frozen CIM tokenizer.

CIM (Fang et al., ICLR 2023, Sec. 3 and 4) uses the pre-trained DALL-E dVAE as its image
tokenizer: an encoder that maps a 112x112 view in [0, 1] to a 14x14 grid of 8192-way logits
(8x downsampling), and a decoder that maps a grid of token ids back to pixels. This module is
our own re-implementation of that architecture as plain ``nn.Module``s, so that the released
weights can be used without the ``dall_e`` package and without unpickling its modules
(``cimpt.tokenizers.dalle_io`` converts the released ``encoder.pkl`` / ``decoder.pkl`` once).

Architecture (identical hyperparameters to the original, ``group_count = 4``):

* Encoder: 7x7 conv ``3 -> n_hid``; four groups of ``n_blk_per_group`` residual blocks with
  widths ``n_hid, 2 n_hid, 4 n_hid, 8 n_hid``, a 2x2 max-pool after each of the first three
  groups; ReLU and a 1x1 conv ``8 n_hid -> vocab_size`` giving the logits.
* Decoder: 1x1 conv ``vocab_size -> n_init`` over the one-hot ids; four groups with widths
  ``8 n_hid, 4 n_hid, 2 n_hid, n_hid``, a nearest 2x upsample after each of the first three;
  ReLU and a 1x1 conv ``n_hid -> 2 * output_channels``. The first ``output_channels`` outputs
  are the logit-Laplace means: sigmoid, then ``unmap_pixels``.
* Residual block: ``id_path(x) + (1 / n_layers**2) * res_path(x)`` with
  ``n_layers = group_count * n_blk_per_group``; ``id_path`` is a 1x1 conv when the width
  changes and the identity otherwise; ``res_path`` is ReLU-conv four times with hidden width
  ``n_out / 4`` (encoder kernels 3,3,3,1; decoder kernels 1,3,3,3).

State-dict mapping from the original modules (``dall_e.encoder.Encoder`` /
``dall_e.decoder.Decoder``): module paths are identical (``blocks.input``,
``blocks.group_<g>.block_<i>.{id_path,res_path.conv_<k>}``, ``blocks.output.conv``); only the
parameter names of the custom ``dall_e.utils.Conv2d`` differ, ``w -> weight`` and
``b -> bias``, because we use ``torch.nn.Conv2d`` (same ``[out, in, k, k]`` layout, same
"same" padding). See :func:`state_dict_from_original`.

The original runs the inner convolutions in float16 on CUDA; here everything is float32 and a
caller that wants reduced precision wraps the call in ``torch.autocast``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cimpt.errors import CimptError
from cimpt.tokenizers.base import ImageTokenizer

GROUP_COUNT = 4
DOWNSAMPLE = 2 ** (GROUP_COUNT - 1)
# Logit-Laplace epsilon of the DALL-E dVAE (dall_e.utils.logit_laplace_eps).
LOGIT_LAPLACE_EPS = 0.1


def map_pixels(x: torch.Tensor) -> torch.Tensor:
    """Squeeze pixels ``[B, 3, H, W]`` from [0, 1] into [eps, 1 - eps], as the dVAE expects."""
    return (1 - 2 * LOGIT_LAPLACE_EPS) * x + LOGIT_LAPLACE_EPS


def unmap_pixels(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`map_pixels` for decoder means ``[B, 3, H, W]``, clamped to [0, 1]."""
    return torch.clamp((x - LOGIT_LAPLACE_EPS) / (1 - 2 * LOGIT_LAPLACE_EPS), 0, 1)


def _conv(n_in: int, n_out: int, kernel: int) -> nn.Conv2d:
    # Odd kernels with (k - 1) / 2 padding keep the resolution, like dall_e.utils.Conv2d.
    return nn.Conv2d(n_in, n_out, kernel, padding=(kernel - 1) // 2)


class ResBlock(nn.Module):
    """One dVAE residual block: ``[B, n_in, H, W] -> [B, n_out, H, W]``.

    Args:
        n_in, n_out: channel widths (``n_out`` divisible by 4: the hidden width is n_out / 4).
        n_layers: total blocks in the network; the residual branch is scaled by 1 / n_layers**2
            (DALL-E's "post_gain", which keeps the deep residual stack stable at init).
        kernels: kernel sizes of the four convolutions of the residual branch.
    """

    def __init__(self, n_in: int, n_out: int, n_layers: int, kernels: tuple[int, ...]) -> None:
        super().__init__()
        if n_out % 4:
            raise CimptError(f"DALL-E block width {n_out} is not divisible by 4")
        n_hid = n_out // 4
        self.post_gain = 1.0 / n_layers**2
        self.id_path: nn.Module = _conv(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        widths = [n_in, n_hid, n_hid, n_hid, n_out]
        layers: list[tuple[str, nn.Module]] = []
        for k, kernel in enumerate(kernels, start=1):
            layers.append((f"relu_{k}", nn.ReLU()))
            layers.append((f"conv_{k}", _conv(widths[k - 1], widths[k], kernel)))
        self.res_path = nn.Sequential(OrderedDict(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.id_path(x) + self.post_gain * self.res_path(x)


def _group(
    n_in: int,
    width: int,
    n_blk: int,
    n_layers: int,
    kernels: tuple[int, ...],
    tail: nn.Module | None,
) -> nn.Sequential:
    """``n_blk`` blocks ``n_in -> width`` (the first changes the width), then ``tail``."""
    layers: list[tuple[str, nn.Module]] = [
        (f"block_{i + 1}", ResBlock(n_in if i == 0 else width, width, n_layers, kernels))
        for i in range(n_blk)
    ]
    if tail is not None:
        layers.append(("pool" if isinstance(tail, nn.MaxPool2d) else "upsample", tail))
    return nn.Sequential(OrderedDict(layers))


class DalleEncoder(nn.Module):
    """Images ``[B, C_in, H, W]`` (already ``map_pixels``-ed) -> logits ``[B, V, H/8, W/8]``."""

    def __init__(
        self,
        n_hid: int = 256,
        n_blk_per_group: int = 2,
        input_channels: int = 3,
        vocab_size: int = 8192,
    ) -> None:
        super().__init__()
        n_layers = GROUP_COUNT * n_blk_per_group
        kernels = (3, 3, 3, 1)
        widths = [n_hid, 2 * n_hid, 4 * n_hid, 8 * n_hid]
        layers: list[tuple[str, nn.Module]] = [("input", _conv(input_channels, n_hid, 7))]
        n_in = n_hid
        for g, width in enumerate(widths, start=1):
            pool = nn.MaxPool2d(kernel_size=2) if g < GROUP_COUNT else None
            group = _group(n_in, width, n_blk_per_group, n_layers, kernels, pool)
            layers.append((f"group_{g}", group))
            n_in = width
        layers.append(
            (
                "output",
                nn.Sequential(
                    OrderedDict([("relu", nn.ReLU()), ("conv", _conv(8 * n_hid, vocab_size, 1))])
                ),
            )
        )
        self.blocks = nn.Sequential(OrderedDict(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class DalleDecoder(nn.Module):
    """Token distributions ``[B, V, h, w]`` -> statistics ``[B, 2 * C_out, 8h, 8w]``.

    The first ``C_out`` output channels are the logit-Laplace means (pre-sigmoid), the others
    the log-scales, which image decoding ignores.
    """

    def __init__(
        self,
        n_init: int = 128,
        n_hid: int = 256,
        n_blk_per_group: int = 2,
        output_channels: int = 3,
        vocab_size: int = 8192,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        n_layers = GROUP_COUNT * n_blk_per_group
        kernels = (1, 3, 3, 3)
        widths = [8 * n_hid, 4 * n_hid, 2 * n_hid, n_hid]
        layers: list[tuple[str, nn.Module]] = [("input", _conv(vocab_size, n_init, 1))]
        n_in = n_init
        for g, width in enumerate(widths, start=1):
            up = nn.Upsample(scale_factor=2, mode="nearest") if g < GROUP_COUNT else None
            group = _group(n_in, width, n_blk_per_group, n_layers, kernels, up)
            layers.append((f"group_{g}", group))
            n_in = width
        layers.append(
            (
                "output",
                nn.Sequential(
                    OrderedDict(
                        [("relu", nn.ReLU()), ("conv", _conv(n_hid, 2 * output_channels, 1))]
                    )
                ),
            )
        )
        self.blocks = nn.Sequential(OrderedDict(layers))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.blocks(z)

    def forward_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids ``[B, h, w]`` -> statistics ``[B, 2 * C_out, 8h, 8w]``.

        Same result as ``forward(one_hot(ids))``: the input layer is a 1x1 conv, so on a one-hot
        input it just selects one weight column. Gathering that column avoids materialising a
        ``[B, V, h, w]`` one-hot tensor (V = 8192: 400 MB for a batch of 64 at 14x14).
        """
        conv = self.blocks.input
        assert isinstance(conv, nn.Conv2d) and conv.bias is not None
        table = conv.weight[:, :, 0, 0].t()  # [V, n_init]
        x = F.embedding(ids, table) + conv.bias  # [B, h, w, n_init]
        x = x.permute(0, 3, 1, 2).contiguous()
        for name, layer in self.blocks.named_children():
            if name != "input":
                x = layer(x)
        return x


class DalleTokenizer(ImageTokenizer):
    """The DALL-E dVAE as a CIM tokenizer (vocabulary 8192, 8x downsampling by default).

    ``encode`` applies ``map_pixels`` and takes the argmax of the encoder logits (the "golden
    tokens" of CIM); ``decode`` runs the decoder on one-hot ids and maps the sigmoid of the
    first three outputs back with ``unmap_pixels``, exactly as the DALL-E usage notebook does.

    Args:
        vocab_size: codebook size V (8192 in the released model).
        encoder_hid, encoder_blocks: encoder ``n_hid`` (256) and ``n_blk_per_group`` (2).
        decoder_init, decoder_hid, decoder_blocks: decoder ``n_init`` (128), ``n_hid`` (256)
            and ``n_blk_per_group`` (2).
        input_channels, output_channels: image channels (3).
    """

    kind = "dalle"  # the file kind save_tokenizer records

    downsample = DOWNSAMPLE

    def __init__(
        self,
        vocab_size: int = 8192,
        encoder_hid: int = 256,
        encoder_blocks: int = 2,
        decoder_init: int = 128,
        decoder_hid: int = 256,
        decoder_blocks: int = 2,
        input_channels: int = 3,
        output_channels: int = 3,
    ) -> None:
        super().__init__()
        self._arch = {
            "vocab_size": vocab_size,
            "encoder_hid": encoder_hid,
            "encoder_blocks": encoder_blocks,
            "decoder_init": decoder_init,
            "decoder_hid": decoder_hid,
            "decoder_blocks": decoder_blocks,
            "input_channels": input_channels,
            "output_channels": output_channels,
        }
        bad = [k for k, v in self._arch.items() if not isinstance(v, int) or v < 1]
        if bad:
            raise CimptError(f"DALL-E tokenizer: {', '.join(bad)} must be positive integers")
        self.vocab_size = vocab_size
        self.output_channels = output_channels
        self.encoder = DalleEncoder(encoder_hid, encoder_blocks, input_channels, vocab_size)
        self.decoder = DalleDecoder(
            decoder_init, decoder_hid, decoder_blocks, output_channels, vocab_size
        )

    def encode_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in [0, 1] -> logits ``[B, V, H/8, W/8]``."""
        h, w = x.shape[-2:]
        if h % self.downsample or w % self.downsample:
            raise CimptError(
                f"DALL-E tokenizer input {h}x{w} is not divisible by {self.downsample}"
            )
        return self.encoder(map_pixels(x))

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in [0, 1] -> token ids ``[B, H/8, W/8]`` (int64, argmax)."""
        return self.encode_logits(x).argmax(dim=1)

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids ``[B, h, w]`` -> images ``[B, 3, 8h, 8w]`` in [0, 1]."""
        stats = self.decoder.forward_ids(ids.long())
        means = torch.sigmoid(stats[:, : self.output_channels].float())
        return unmap_pixels(means)

    def arch_config(self) -> dict[str, Any]:
        """Constructor arguments: ``DalleTokenizer(**tok.arch_config())`` rebuilds the module."""
        return dict(self._arch)


def state_dict_from_original(
    sd: dict[str, torch.Tensor], prefix: str = ""
) -> dict[str, torch.Tensor]:
    """Map a state dict of ``dall_e``'s Encoder or Decoder onto :class:`DalleEncoder` /
    :class:`DalleDecoder` names: ``<path>.w -> <prefix><path>.weight``,
    ``<path>.b -> <prefix><path>.bias``; every other key is copied unchanged (with prefix).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        base, _, leaf = key.rpartition(".")
        leaf = {"w": "weight", "b": "bias"}.get(leaf, leaf)
        out[f"{prefix}{base}.{leaf}" if base else f"{prefix}{leaf}"] = value
    return out
