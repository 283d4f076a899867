"""Config -> the pre-training module of ``objective``: CIM or one of the baselines.

The one place that maps ``objective`` to a module, so ``cimpt pretrain``, ``cimpt visualize``
and the benchmarks build every method the same way. Checks that depend on the backbone
(MAE needs a ViT) run here, before any data is read.
"""

from __future__ import annotations

from omegaconf import DictConfig
from torch import nn

from cimpt.errors import CimptError
from cimpt.models.enhancer import build_enhancer
from cimpt.tokenizers.base import ImageTokenizer

#: Objectives that read a frozen tokenizer's ids (and so need ``tokenizer.checkpoint``).
NEEDS_TOKENIZER = ("respix", "revdet", "beit")


def build_pretrain_model(cfg: DictConfig, tokenizer: ImageTokenizer | None) -> nn.Module:
    """The module ``cimpt pretrain`` trains for ``cfg.objective``.

    Args:
        cfg: the validated root config.
        tokenizer: the loaded frozen tokenizer; required for ``NEEDS_TOKENIZER`` objectives,
            ignored by the others.
    """
    objective = str(cfg.objective)
    if objective in NEEDS_TOKENIZER and tokenizer is None:
        raise CimptError(f"objective: {objective} needs a tokenizer (tokenizer.checkpoint)")
    if objective in ("respix", "revdet"):
        from cimpt.cim import build_cim

        return build_cim(cfg, tokenizer)  # type: ignore[arg-type]
    mean, std = list(cfg.data.mean), list(cfg.data.std)
    if objective == "mae":
        return _build_mae(cfg, mean, std)
    if objective == "simmim":
        from cimpt.baselines.simmim import SimMIM

        return SimMIM(build_enhancer(cfg), mean=mean, std=std)
    from cimpt.baselines.beit import BEiT
    from cimpt.models.frozen_tokenizer import check_tokenizer

    assert tokenizer is not None
    check_tokenizer(tokenizer, cfg)
    return BEiT(
        tokenizer,
        build_enhancer(cfg),
        int(cfg.tokenizer.vocab_size),
        mean=mean,
        std=std,
        tokenizer_precision=str(cfg.tokenizer.precision),
    )


def _build_mae(cfg: DictConfig, mean: list[float], std: list[float]) -> nn.Module:
    from cimpt.baselines.mae import MAE, MAEDecoder

    enhancer = build_enhancer(cfg)
    m = cfg.mae
    num_prefix = int(getattr(enhancer.backbone, "num_prefix_tokens", 0))
    decoder = MAEDecoder(
        enhancer.out_dim,
        int(m.decoder_dim),
        int(m.decoder_depth),
        int(m.decoder_heads),
        enhancer.grid,
        enhancer.patch_size,
        num_prefix,
    )
    return MAE(enhancer, decoder, norm_pix_loss=bool(m.norm_pix_loss), mean=mean, std=std)
