"""The CIM enhancer: any timm backbone, seen through one per-position feature accessor.

Fang et al., "Corrupted Image Modeling" (ICLR 2023, arXiv 2202.03382), Sec. 2: the enhancer
is the network kept after pre-training; it can be a ViT or a CNN and sees only the corrupted
image. Both objectives (RESPIX, REVDET) need one feature vector per token-grid position, so
the heads read ``Enhancer.features(x) -> [B, C, g, g]`` and never touch the backbone.

ViTs give their final patch tokens. CNNs (any timm model with a feature pyramid: ResNet,
ConvNeXt, EfficientNet, ...) give their stages from stride ``patch_size`` (the token grid)
to the deepest, merged top-down to the grid by a light FPN neck (``cimpt.models.neck``),
because the paper's claim is that CIM is architecture-agnostic: the enhancer only ever sees
a normal-looking image, so a CNN can be pre-trained like a ViT.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import timm
import torch
from torch import nn

from cimpt.config import EnhancerConfig
from cimpt.errors import CimptError
from cimpt.models.neck import GridFPN
from cimpt.models.weights import create_timm_model


def _check_timm_name(name: str) -> None:
    """Fail early, with the config key, when timm does not know ``name``."""
    base = name.split(".", 1)[0]  # timm accepts "arch.pretrained_tag"
    if not (timm.is_model(name) or timm.is_model(base)):
        raise CimptError(f"enhancer.name: '{name}' is not a timm model")


def is_vit(name: str, kwargs: dict[str, Any] | None = None) -> bool:
    """Whether timm's ``name`` is a patch-token ViT (else it is treated as a CNN).

    Built on the meta device: no memory, no weights, only the class's attributes.
    """
    return _is_vit_cached(name, json.dumps(dict(kwargs or {}), sort_keys=True))


@functools.lru_cache(maxsize=64)
def _is_vit_cached(name: str, kwargs_json: str) -> bool:
    kwargs = json.loads(kwargs_json)
    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except TypeError:
        return False  # e.g. ViT-only kwargs given to a CNN: the real build reports it
    return hasattr(model, "patch_embed") and hasattr(model, "num_prefix_tokens")


def _create(
    name: str,
    drop_path: float,
    kwargs: dict[str, Any],
    vit_size: dict[str, Any],
    pretrained: str = "",
) -> Any:
    """``timm.create_model`` without a classifier (ViTs also get img_size/patch_size), from
    the weights ``pretrained`` names (``cimpt.models.weights``)."""
    try:
        return create_timm_model(
            pretrained,
            model_name=name,
            num_classes=0,
            drop_path_rate=drop_path,
            **vit_size,
            **kwargs,
        )
    except TypeError as exc:
        # timm passes unknown keyword arguments to the model class, which raises TypeError
        # (a typo in enhancer.kwargs, or a model without drop path).
        first = str(exc).splitlines()[0]
        raise CimptError(
            f"enhancer.name: timm could not build '{name}' with {dict(vit_size)} and "
            f"enhancer.kwargs={dict(kwargs)} ({first})"
        ) from None


def grid_stages(name: str, backbone: Any, patch_size: int) -> list[int]:
    """Indices of the CNN stages from stride ``patch_size`` (the grid) to the deepest.

    Raises ``CimptError`` naming the backbone and its strides when none equals the grid's.
    """
    info = getattr(backbone, "feature_info", None)
    if not info or not hasattr(backbone, "forward_intermediates"):
        raise CimptError(
            f"enhancer.name: '{name}' exposes no feature pyramid "
            "(timm feature_info / forward_intermediates); use a ViT or a CNN "
            "that timm can run with features_only"
        )
    strides = [int(f["reduction"]) for f in info]
    if patch_size not in strides:
        raise CimptError(
            f"enhancer.patch_size: {patch_size} is not a feature stride of '{name}' "
            f"(strides {', '.join(map(str, strides))}); the token grid is data.img_size / "
            "enhancer.patch_size, so patch_size must be one of those strides"
        )
    first = strides.index(patch_size)
    return list(range(first, len(strides)))


class Enhancer(nn.Module):
    """A timm backbone with per-position features on the token grid.

    Args:
        name: timm model name (e.g. ``vit_tiny_patch16_224``, ``resnet50``; only the
            architecture is used, never downloaded weights).
        img_size: side R of the input image.
        patch_size: pixels per grid cell; the grid is ``g = R / patch_size``. For a CNN it
            must be one of its feature strides.
        drop_path: stochastic depth rate.
        kwargs: extra timm keyword arguments (e.g. ``embed_dim``, ``depth``, ``num_heads``).
        neck_dim: channels of a CNN's FPN neck output (unused for ViTs).
        pretrained: start weights, ``enhancer.pretrained`` (``cimpt.models.weights``).

    Attributes:
        backbone: the timm model (what is exported and fine-tuned).
        kind: ``vit`` or ``cnn``.
        neck: the CNN's ``GridFPN`` (None for a ViT); discarded after pre-training.
        patch_size: pixels per grid cell along each side.
        out_dim: channels C of ``features``.
        grid: side g of the feature grid.
    """

    # Any: timm models expose architecture-specific attributes (patch_embed, num_prefix_tokens).
    backbone: Any

    def __init__(
        self,
        name: str,
        img_size: int,
        patch_size: int,
        drop_path: float,
        kwargs: dict[str, Any] | None = None,
        neck_dim: int = 256,
        pretrained: str = "",
    ) -> None:
        super().__init__()
        _check_timm_name(name)
        kwargs = dict(kwargs or {})
        self.name = name
        self.kind = "vit" if is_vit(name, kwargs) else "cnn"
        self.patch_size = patch_size
        self.grid = img_size // patch_size
        self.neck: GridFPN | None = None
        if self.kind == "cnn":
            self.backbone = _create(name, drop_path, kwargs, {}, pretrained)
            self.stages = grid_stages(name, self.backbone, patch_size)
            chans = [int(self.backbone.feature_info[i]["num_chs"]) for i in self.stages]
            self.neck = GridFPN(chans, neck_dim)
            self.out_dim = neck_dim
            return
        vit_size = {"img_size": img_size, "patch_size": patch_size}
        self.backbone = _create(name, drop_path, kwargs, vit_size, pretrained)
        self.out_dim = int(self.backbone.num_features)
        built = tuple(self.backbone.patch_embed.grid_size)
        if built != (self.grid, self.grid):
            raise CimptError(
                f"enhancer: '{name}' built a {built[0]}x{built[1]} patch grid, expected "
                f"{self.grid}x{self.grid} (data.img_size / enhancer.patch_size)"
            )

    def no_weight_decay(self) -> set[str]:
        """Names (relative to this module) of the backbone's embeddings that skip weight decay."""
        own: set[str] = getattr(self.backbone, "no_weight_decay", lambda: set())()
        present = {n for n, _ in self.backbone.named_parameters()}
        return {f"backbone.{n}" for n in own if n in present}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-position features on the token grid.

        Args:
            x: images ``[B, 3, R, R]``.

        Returns:
            ``[B, C, g, g]`` with ``C = out_dim``.
        """
        if self.kind == "vit":
            # Final (normed) patch tokens, prefix tokens ([CLS], registers) dropped: timm's
            # last-block intermediate with the final norm equals forward_features' patch
            # tokens (tests/models/test_enhancer.py), already as a [B, C, g, g] map.
            last = self.backbone.forward_intermediates(
                x, indices=1, norm=True, intermediates_only=True
            )
            return last[0]
        return self._cnn_features(x)

    def _cnn_features(self, x: torch.Tensor) -> torch.Tensor:
        """CNN: stages from the grid stride to the deepest, merged top-down by the neck."""
        assert self.neck is not None
        maps = self.backbone.forward_intermediates(x, indices=self.stages, intermediates_only=True)
        feats = self.neck(maps)  # [B, D, H, W] at the grid stride
        if feats.shape[-2:] != (self.grid, self.grid):
            raise CimptError(
                f"enhancer: '{self.name}' gave a {feats.shape[-2]}x{feats.shape[-1]} map at "
                f"stride {self.patch_size}, expected {self.grid}x{self.grid} "
                "(data.img_size / enhancer.patch_size)"
            )
        return feats

    def tokens_to_grid(self, tokens: torch.Tensor) -> torch.Tensor:
        """ViT tokens ``[B, prefix + g*g, C]`` -> patch tokens as a map ``[B, C, g, g]``."""
        tokens = tokens[:, self.backbone.num_prefix_tokens :]
        b, _, c = tokens.shape
        return tokens.transpose(1, 2).reshape(b, c, self.grid, self.grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same as ``features``: ``[B, 3, R, R] -> [B, C, g, g]``."""
        return self.features(x)


def build_enhancer(e: EnhancerConfig, img_size: int) -> Enhancer:
    """The run's enhancer from ``enhancer.*`` and ``data.img_size`` (every pre-training
    objective builds it here, so CIM and the baselines train the same network)."""
    # A copy, so the model never shares a dict with the config it was built from.
    return Enhancer(
        e.name, img_size, e.patch_size, e.drop_path, dict(e.kwargs), e.neck_dim, e.pretrained
    )
