"""One CPU step of the paper's ImageNet ViT-B/16 setting (``configs/imagenet_vit_b.yaml``).

Fang et al. 2023 pre-train a ViT-B/16 at 224 px with the DALL-E dVAE (vocabulary 8192, 8x
downsampling) seeing a 112 px view, so the token grid is the 14x14 patch grid. This test runs
that config for one step on four 256 px images, with a randomly initialised ``DalleTokenizer``
at the real vocabulary and downsampling but narrow hidden widths: at the released widths
(98 M parameters) the tokenizer alone took about 8 s per step on the shared 2-core CPU, at
these widths about 0.2 s; the grid and the generator's 8192-way output are unchanged.
"""

from __future__ import annotations

import math
import shutil
from typing import Any

import pytest
import torch
from safetensors import safe_open

import cimpt.pretrain
from cimpt.config import load_config, token_grid, tokenizer_resolution
from cimpt.engine.loop import Trainer
from cimpt.pretrain import pretrain
from cimpt.tokenizers.dalle import DalleTokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


class RecordingDalle(DalleTokenizer):
    """A DALL-E tokenizer that records the (input, output) shapes of every ``encode``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seen: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        ids = super().encode(x)
        self.seen.append((tuple(x.shape), tuple(ids.shape)))
        return ids


@pytest.fixture
def built_tasks(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every task ``cimpt.pretrain`` builds, kept for inspection; checkpoints are skipped.

    Writing a ViT-B or ResNet-50 checkpoint (1.4 GB / 0.3 GB with the AdamW state) took
    7-9 s on the shared CPU; the tiny runs of test_pretrain.py cover that code path.
    """
    built: list[Any] = []
    real_build = cimpt.pretrain.build_cim_task

    def build_and_keep(*args: Any, **kwargs: Any) -> Any:
        built.append(real_build(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(cimpt.pretrain, "build_cim_task", build_and_keep)
    monkeypatch.setattr(Trainer, "save", lambda self: None)
    return built


def test_one_step_of_the_vit_b_config(tmp_path, e2e, built_tasks) -> None:
    folder = e2e.write_image_folder(tmp_path / "images", n_per_class=2, size=256)
    run = tmp_path / "run"
    cfg = load_config(
        e2e.IMAGENET_CONFIG,
        [
            f"data.path={folder}",
            "train.batch_size=2",
            "train.max_steps=1",
            "data.num_workers=0",
            f"run.dir={run}",
            "run.progress=false",
            "run.tensorboard=false",
        ],
    )
    assert (cfg.data.img_size, cfg.enhancer.patch_size) == (224, 16)
    assert (cfg.tokenizer.vocab_size, cfg.tokenizer.downsample) == (8192, 8)
    assert token_grid(cfg) == 14 and tokenizer_resolution(cfg) == 112

    torch.manual_seed(0)
    tok = RecordingDalle(
        vocab_size=8192,
        encoder_hid=32,
        encoder_blocks=1,
        decoder_init=16,
        decoder_hid=32,
        decoder_blocks=1,
    )
    try:
        result = pretrain(cfg, tokenizer=tok)
        assert result.state.step == 1 and not result.interrupted
        m = result.last_metrics
        for key in ("loss", "gen_loss", "enh_loss", "respix_loss", "grad_norm"):
            assert math.isfinite(m[key]), key
        # A fresh generator is near-uniform over the 8192 DALL-E codes: CE close to ln 8192.
        assert abs(m["gen_loss"] - math.log(8192)) < 2.0

        # The training step encoded the batch's 112 px views into 14x14 grids.
        assert ((2, 3, 112, 112), (2, 14, 14)) in tok.seen
        assert all(x[-2:] == (112, 112) and ids[-2:] == (14, 14) for x, ids in tok.seen)

        model = built_tasks[0].model
        vit = model.enhancer.backbone
        assert vit.embed_dim == 768 and len(vit.blocks) == 12
        assert tuple(vit.patch_embed.patch_size) == (16, 16)
        assert tuple(vit.patch_embed.grid_size) == (14, 14)
        assert model.generator.head.out_features == 8192 and len(model.generator.blocks) == 4
        # The enhancer exported at the end is the ViT-B/16 for 224 px: 196 patches + [CLS].
        with safe_open(str(run / "enhancer.safetensors"), framework="pt") as f:
            assert f.get_slice("pos_embed").get_shape() == [1, 197, 768]
            assert f.get_slice("patch_embed.proj.weight").get_shape() == [768, 3, 16, 16]
        assert sorted(run.glob("figures/cim_*.png"))
    finally:
        # The 330 MB export: do not leave it in pytest's kept temp dirs.
        shutil.rmtree(run, ignore_errors=True)


def test_one_step_of_the_resnet50_config(tmp_path, e2e, built_tasks) -> None:
    """The paper's ResNet-50 setting: 224 px, stride-16 stage = the 14x14 DALL-E grid."""
    folder = e2e.write_image_folder(tmp_path / "images", n_per_class=2, size=256)
    run = tmp_path / "run"
    cfg = load_config(
        e2e.IMAGENET_CONFIG.with_name("imagenet_resnet50.yaml"),
        [
            f"data.path={folder}",
            "train.batch_size=2",
            "train.max_steps=1",
            "data.num_workers=0",
            f"run.dir={run}",
            "run.progress=false",
            "run.tensorboard=false",
        ],
    )
    assert cfg.enhancer.name == "resnet50" and dict(cfg.enhancer.kwargs) == {}
    assert token_grid(cfg) == 14 and tokenizer_resolution(cfg) == 112
    torch.manual_seed(0)
    tok = RecordingDalle(
        vocab_size=8192,
        encoder_hid=32,
        encoder_blocks=1,
        decoder_init=16,
        decoder_hid=32,
        decoder_blocks=1,
    )
    try:
        result = pretrain(cfg, tokenizer=tok)
        assert result.state.step == 1 and math.isfinite(result.last_metrics["respix_loss"])
        enhancer = built_tasks[0].model.enhancer
        # ResNet-50's strides are 2, 4, 8, 16, 32: stages 3 (14x14) and 4 (7x7) feed the neck.
        assert enhancer.kind == "cnn" and enhancer.stages == [3, 4]
        with torch.no_grad():
            assert enhancer.features(torch.randn(1, 3, 224, 224)).shape == (1, 256, 14, 14)
        with safe_open(str(run / "enhancer.safetensors"), framework="pt") as f:
            assert f.get_slice("conv1.weight").get_shape() == [64, 3, 7, 7]
            assert f.get_slice("layer4.2.conv3.weight").get_shape() == [2048, 512, 1, 1]
            assert not any(k.startswith("neck") for k in f.keys())  # noqa: SIM118
    finally:
        shutil.rmtree(run, ignore_errors=True)
