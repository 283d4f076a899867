"""The enhancer as a classifier: a timm backbone with a linear head.

Fine-tuning keeps the backbone exactly as pre-trained and adds timm's own classifier. For a
ViT the image feature is the mean of the final (normed) patch tokens by default
(``finetune.global_pool=avg``; BEiT's choice, because CIM never trains the [CLS] token: both
objectives read patch tokens only), or the [CLS] token (``token``). timm's ``fc_norm`` is
turned off so the pre-trained final LayerNorm is kept rather than replaced by a new one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cimpt.models.weights import classifier_keys, create_timm_model
from cimpt.weights_io import check_fits


def is_vit_args(args: dict[str, Any]) -> bool:
    """Whether timm arguments describe a patch-token ViT (its builder takes ``patch_size``)."""
    return "patch_size" in args


def classifier_args(
    backbone_args: dict[str, Any], num_classes: int, drop_path: float, global_pool: str
) -> dict[str, Any]:
    """``timm.create_model`` arguments of the backbone with an ``num_classes``-way head."""
    args = {**backbone_args, "num_classes": num_classes, "drop_path_rate": drop_path}
    if is_vit_args(args):
        args.update(global_pool=global_pool, fc_norm=False)
    return args


class Classifier(nn.Module):
    """``backbone``: a timm model with a head; ``forward`` gives logits ``[B, num_classes]``.

    Args:
        args: ``timm.create_model`` keyword arguments (see ``classifier_args``).
        pretrained: start weights, ``enhancer.pretrained`` (``cimpt.models.weights``).
    """

    backbone: Any  # timm models expose forward_features / forward_head / get_classifier

    def __init__(self, args: dict[str, Any], pretrained: str = "") -> None:
        super().__init__()
        self.backbone = create_timm_model(pretrained, **args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, R, R] -> [B, num_classes]`` logits."""
        return self.backbone(x)


def load_backbone_into(backbone: Any, state: dict[str, torch.Tensor], origin: str) -> None:
    """Load pre-trained weights into a timm model; only its head may be missing (new).

    ``state`` is headless (``BackboneSource`` drops a fine-tuned head, since the number of
    classes may differ). Any other mismatch is an error naming ``origin``.
    """
    head = classifier_keys(backbone)
    own = {k: v for k, v in backbone.state_dict().items() if k not in head}
    check_fits(own, state, origin, "the model", "init.checkpoint")
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= head, (missing, unexpected)
