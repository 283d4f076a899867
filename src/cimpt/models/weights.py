"""``enhancer.pretrained``: start the timm backbone from existing weights (issue 16, item 10).

Continued pre-training, or fine-tuning / probing a released model as a baseline, needs the
backbone to start from weights that are not a cimpt checkpoint:

- ``""`` (default): random initialization;
- ``timm``: timm's released weights for ``enhancer.name`` (downloaded once from the Hugging
  Face hub, then read from its cache, also offline);
- a path: a local weights file (``.safetensors``, ``.pth``, ``.bin``) of that timm model,
  loaded through timm's own pretrained path (``pretrained_cfg_overlay=dict(file=PATH)``), so
  timm adapts it as it does its released weights: a ViT's position embeddings and patch
  embedding are resampled to ``data.img_size`` / ``enhancer.patch_size``, and a classifier
  whose size differs from ``num_classes`` is dropped.

Any failure (offline with nothing cached, no released weights for the name, a file of
another model) is one ``CimptError`` line naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
from torch import nn

from cimpt.errors import CimptError, first_line
from cimpt.weights_io import check_fits

TIMM = "timm"


def pretrained_kwargs(pretrained: str) -> dict[str, Any]:
    """``timm.create_model`` keyword arguments for an ``enhancer.pretrained`` value."""
    if not pretrained:
        return {"pretrained": False}
    if pretrained == TIMM:
        return {"pretrained": True}
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise CimptError(f"enhancer.pretrained: {path} is not a file (use '', 'timm' or a path)")
    return {"pretrained": True, "pretrained_cfg_overlay": {"file": str(path.resolve())}}


def _check_file_fits(path: Path, model: nn.Module) -> None:
    """Every weight of ``model`` but its classifier must come from the file.

    timm loads a pretrained file leniently (unexpected and missing keys are only logged), so
    a file of another model would silently leave the backbone random.
    """
    from timm.models import load_state_dict

    given = set(load_state_dict(str(path)))
    head = classifier_keys(model)
    own = {k: v for k, v in model.state_dict().items() if k not in head}
    # timm resamples shapes and drops extra keys itself: only a missing key does not fit.
    fitted = {k: v for k, v in own.items() if k in given}
    check_fits(own, fitted, path, "this timm model", "enhancer.pretrained")


def classifier_keys(model: Any) -> set[str]:
    """State-dict keys of a timm model's classifier (new when the class count differs)."""
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    for name, module in model.named_modules():
        if head is not None and module is head:
            return {f"{name}.{k}" for k in module.state_dict()}
    return set()


def create_timm_model(pretrained: str, **args: Any) -> nn.Module:
    """``timm.create_model(**args)``, with the weights ``pretrained`` names (module docstring).

    ``TypeError`` (an argument the model does not take) is left to the caller, which knows
    the config keys to name.
    """
    extra = pretrained_kwargs(pretrained)
    try:
        model = timm.create_model(**args, **extra)
        if "pretrained_cfg_overlay" in extra:
            _check_file_fits(Path(extra["pretrained_cfg_overlay"]["file"]), model)
        return model
    except (TypeError, CimptError):
        raise
    except Exception as exc:  # hub, file and state-dict errors come in many types
        if not extra["pretrained"]:
            raise
        name, why = args.get("model_name", "?"), first_line(exc)[:300]
        if pretrained == TIMM:
            raise CimptError(
                f"enhancer.pretrained=timm: could not get timm's released weights for "
                f"'{name}' ({why}); when offline they must be in the Hugging Face cache "
                "(download them once online), or give a local weights file: "
                "enhancer.pretrained=/path/to/weights.safetensors"
            ) from None
        raise CimptError(
            f"enhancer.pretrained: {pretrained} does not load into '{name}' ({why})"
        ) from None
