"""Config -> the pre-training module of ``objective``: CIM or one of the baselines.

The one place that maps ``objective`` to a module, so ``cimpt pretrain``, ``cimpt visualize``
and the benchmarks build every method the same way. The start-up checks run while building,
before any data is read: token grid == patch grid and vocabularies (``check_tokenizer``),
MAE's need of a ViT. The builders take ``config.typed(cfg)``, not the ``DictConfig``.
"""

from __future__ import annotations

from torch import nn

from cimpt.cim import CIM
from cimpt.cim_objectives import OBJECTIVES
from cimpt.config import MAEConfig, RootConfig
from cimpt.errors import CimptError
from cimpt.models.enhancer import Enhancer, build_enhancer
from cimpt.models.frozen_tokenizer import check_tokenizer
from cimpt.models.generator import BEiTGenerator
from cimpt.tokenizers.base import ImageTokenizer

#: Objectives that read a frozen tokenizer's ids (and so need ``tokenizer.checkpoint``).
NEEDS_TOKENIZER = ("respix", "revdet", "beit")


def build_pretrain_model(cfg: RootConfig, tokenizer: ImageTokenizer | None) -> nn.Module:
    """The module ``cimpt pretrain`` trains for ``cfg.objective``.

    Args:
        cfg: the validated root config (``config.typed``).
        tokenizer: the loaded frozen tokenizer; required for ``NEEDS_TOKENIZER`` objectives,
            ignored by the others.
    """
    objective = cfg.objective
    if objective in NEEDS_TOKENIZER and tokenizer is None:
        raise CimptError(f"objective: {objective} needs a tokenizer (tokenizer.checkpoint)")
    if objective in OBJECTIVES:
        return build_cim(cfg, tokenizer)  # type: ignore[arg-type]
    mean, std = cfg.data.mean, cfg.data.std
    enhancer = build_enhancer(cfg.enhancer, cfg.data.img_size)
    if objective == "mae":
        return _build_mae(cfg.mae, enhancer, mean, std)
    if objective == "simmim":
        from cimpt.baselines.simmim import SimMIM

        return SimMIM(enhancer, mean=mean, std=std)
    from cimpt.baselines.beit import BEiT

    assert tokenizer is not None
    check_tokenizer(tokenizer, cfg)
    return BEiT(
        tokenizer,
        enhancer,
        cfg.tokenizer.vocab_size,
        mean=mean,
        std=std,
        tokenizer_precision=cfg.tokenizer.precision,
    )


def _build_mae(m: MAEConfig, enhancer: Enhancer, mean: list[float], std: list[float]) -> nn.Module:
    from cimpt.baselines.mae import MAE, MAEDecoder

    num_prefix = int(getattr(enhancer.backbone, "num_prefix_tokens", 0))
    decoder = MAEDecoder(
        enhancer.out_dim,
        m.decoder_dim,
        m.decoder_depth,
        m.decoder_heads,
        enhancer.grid,
        enhancer.patch_size,
        num_prefix,
    )
    return MAE(enhancer, decoder, norm_pix_loss=m.norm_pix_loss, mean=mean, std=std)


def build_cim(cfg: RootConfig, tokenizer: ImageTokenizer) -> CIM:
    """The CIM module for ``cfg.objective`` (respix or revdet) and a loaded tokenizer.

    The generator sees the enhancer's view ``x`` cut in the enhancer's patches, so both share
    the token grid; the generator predicts ``cfg.tokenizer.vocab_size`` ids. Parts are built
    in a fixed order (generator, enhancer, head): it fixes their seeded initial weights.
    """
    check_tokenizer(tokenizer, cfg)
    g, e = cfg.generator, cfg.enhancer
    generator = BEiTGenerator(
        img_size=cfg.data.img_size,
        patch_size=e.patch_size,
        vocab_size=cfg.tokenizer.vocab_size,
        embed_dim=g.embed_dim,
        depth=g.depth,
        num_heads=g.num_heads,
        mlp_ratio=g.mlp_ratio,
    )
    enhancer = build_enhancer(e, cfg.data.img_size)
    return CIM(
        tokenizer,
        generator,
        enhancer,
        OBJECTIVES[cfg.objective](cfg.loss, enhancer),
        mean=cfg.data.mean,
        std=cfg.data.std,
        enh_weight=cfg.loss.enh_weight,
        temperature=g.temperature,
        top_k=g.top_k,
        top_p=g.top_p,
        tokenizer_precision=cfg.tokenizer.precision,
    )
