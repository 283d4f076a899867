"""Data pipeline: datasets, CIM's two-resolution views, block masks, collate, sampler.

docs/METHOD.md steps 1 and 2: every image gives two views of one random crop (``x`` for the
networks, ``x_tok`` for the tokenizer) and a BEiT-style block mask over the patch grid.
"""

from cimpt.data.builders import (
    build_cim_loader,
    build_mask_generator,
    build_single_view_transform,
    build_two_view_transform,
)
from cimpt.data.bundled import BUNDLED_PHOTOS, BundledPhotos
from cimpt.data.collate import CIMCollate, ImageCollate
from cimpt.data.datasets import (
    build_dataset,
    class_balanced_subset,
    dataset_classes,
    dataset_labels,
    labelled_subset,
    resolve_source,
)
from cimpt.data.folder import ImageFolderDataset
from cimpt.data.images import IMAGE_EXTENSIONS, BrokenImageWarning, decode_rgb, to_rgb
from cimpt.data.masking import BlockMaskGenerator, auto_min_block
from cimpt.data.random_mask import RandomMaskGenerator
from cimpt.data.sampler import ResumableSampler, build_loader
from cimpt.data.tar_shards import TarShardDataset, expand_shards
from cimpt.data.transforms import EvalTransform, SingleViewTransform, TwoViewTransform

__all__ = [
    "BUNDLED_PHOTOS",
    "IMAGE_EXTENSIONS",
    "BlockMaskGenerator",
    "BrokenImageWarning",
    "BundledPhotos",
    "CIMCollate",
    "EvalTransform",
    "ImageCollate",
    "ImageFolderDataset",
    "RandomMaskGenerator",
    "ResumableSampler",
    "SingleViewTransform",
    "TarShardDataset",
    "TwoViewTransform",
    "auto_min_block",
    "build_cim_loader",
    "build_dataset",
    "build_loader",
    "build_mask_generator",
    "build_single_view_transform",
    "build_two_view_transform",
    "class_balanced_subset",
    "dataset_classes",
    "dataset_labels",
    "decode_rgb",
    "expand_shards",
    "labelled_subset",
    "resolve_source",
    "to_rgb",
]
