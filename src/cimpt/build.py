"""Config -> the pre-training module of ``objective``: CIM or one of the baselines.

The one place that maps ``objective`` to a module, so ``cimpt pretrain``, ``cimpt visualize``
and the benchmarks build every method the same way. The start-up checks run while building,
before any data is read: token grid == patch grid and vocabularies (``check_tokenizer``),
the RESPIX window (``Respix.from_config``), MAE's need of a ViT.
"""

from __future__ import annotations

from omegaconf import DictConfig
from torch import nn

from cimpt.cim import CIM
from cimpt.cim_objectives import OBJECTIVES
from cimpt.errors import CimptError
from cimpt.models.enhancer import build_enhancer
from cimpt.models.frozen_tokenizer import check_tokenizer
from cimpt.models.generator import BEiTGenerator
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
    if objective in OBJECTIVES:
        return build_cim(cfg, tokenizer)  # type: ignore[arg-type]
    mean, std = list(cfg.data.mean), list(cfg.data.std)
    if objective == "mae":
        return _build_mae(cfg, mean, std)
    if objective == "simmim":
        from cimpt.baselines.simmim import SimMIM

        return SimMIM(build_enhancer(cfg), mean=mean, std=std)
    from cimpt.baselines.beit import BEiT

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


def build_cim(cfg: DictConfig, tokenizer: ImageTokenizer) -> CIM:
    """The CIM module for ``cfg.objective`` (respix or revdet) and a loaded tokenizer.

    The generator sees the enhancer's view ``x`` cut in the enhancer's patches, so both share
    the token grid; the generator predicts ``cfg.tokenizer.vocab_size`` ids. Parts are built
    in a fixed order (generator, enhancer, head): it fixes their seeded initial weights.
    """
    check_tokenizer(tokenizer, cfg)
    g, e = cfg.generator, cfg.enhancer
    generator = BEiTGenerator(
        img_size=int(cfg.data.img_size),
        patch_size=int(e.patch_size),
        vocab_size=int(cfg.tokenizer.vocab_size),
        embed_dim=int(g.embed_dim),
        depth=int(g.depth),
        num_heads=int(g.num_heads),
        mlp_ratio=float(g.mlp_ratio),
    )
    enhancer = build_enhancer(cfg)
    return CIM(
        tokenizer,
        generator,
        enhancer,
        OBJECTIVES[str(cfg.objective)](cfg, enhancer),
        mean=list(cfg.data.mean),
        std=list(cfg.data.std),
        enh_weight=float(cfg.loss.enh_weight),
        temperature=float(g.temperature),
        top_k=int(g.top_k),
        top_p=float(g.top_p),
        tokenizer_precision=str(cfg.tokenizer.precision),
    )
