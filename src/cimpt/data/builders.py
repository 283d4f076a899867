"""Config -> data components: the views, the mask generator and the CIM loader of a run.

Components take plain arguments (docs/DESIGN.md: avoid components that take the whole config);
these functions are the one place that reads ``cfg.data`` / ``cfg.mask`` for them.
"""

from __future__ import annotations

from torch.utils.data import DataLoader

from cimpt.config import DataConfig, RootConfig, token_grid, tokenizer_resolution
from cimpt.data.collate import CIMCollate
from cimpt.data.datasets import build_dataset
from cimpt.data.masking import BlockMaskGenerator
from cimpt.data.random_mask import RandomMaskGenerator
from cimpt.data.sampler import build_loader
from cimpt.data.transforms import SingleViewTransform, TwoViewTransform


def build_two_view_transform(cfg: RootConfig) -> TwoViewTransform:
    """x at data.img_size (normalized), x_tok at the tokenizer resolution (docs/METHOD.md,
    step 1)."""
    d = cfg.data
    return TwoViewTransform(
        d.img_size,
        tokenizer_resolution(cfg),
        scale=d.crop_scale,
        ratio=d.crop_ratio,
        hflip=d.hflip,
        mean=d.mean,
        std=d.std,
    )


def build_single_view_transform(d: DataConfig, size: int) -> SingleViewTransform:
    """One [0, 1] view of side ``size`` with the run's crop settings (tokenizer training)."""
    return SingleViewTransform(size, scale=d.crop_scale, ratio=d.crop_ratio, hflip=d.hflip)


def build_mask_generator(cfg: RootConfig) -> BlockMaskGenerator | RandomMaskGenerator:
    """The objective's masks over the enhancer's patch grid, seeded by ``seed``.

    CIM and BEiT: BEiT's blockwise masks (``mask.*``, docs/METHOD.md step 2); MAE: uniform random
    patches (``mae.mask_ratio``); SimMIM: uniform random mask patches of
    ``simmim.mask_patch_size`` pixels (``simmim.mask_ratio``).
    """
    grid, seed = token_grid(cfg), cfg.seed
    if cfg.objective == "mae":
        return RandomMaskGenerator(grid, cfg.mae.mask_ratio, 1, seed, "mae.mask_ratio")
    if cfg.objective == "simmim":
        unit = cfg.simmim.mask_patch_size // cfg.enhancer.patch_size
        ratio = cfg.simmim.mask_ratio
        return RandomMaskGenerator(grid, ratio, unit, seed, "simmim.mask_ratio")
    m = cfg.mask
    return BlockMaskGenerator(
        grid,
        m.ratio,
        m.min_block,
        m.max_block,
        m.min_aspect,
        rng=seed,
        placement=m.placement,
    )


def build_cim_loader(cfg: RootConfig, batch_size: int | None = None) -> DataLoader:
    """The pre-training loader: train split, two views + block mask per image."""
    dataset = build_dataset(cfg, "train", build_two_view_transform(cfg))
    return build_loader(
        dataset,
        batch_size or cfg.train.batch_size,
        cfg.data.num_workers,
        CIMCollate(build_mask_generator(cfg)),
        seed=cfg.seed,
    )
