"""End-to-end tests of ``cimpt export`` and ``cimpt visualize`` on tiny pre-training runs.

After pre-training the generator is thrown away and the enhancer alone is fine-tuned (Fang et
al. 2023, Sec. 2), so the exported file must rebuild exactly the pre-trained timm backbone.
The reference backbone here is rebuilt by hand from the checkpoint's ``enhancer.backbone.*``
tensors with ``timm.create_model``, independently of ``cimpt.export``.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file

from cimpt.config import load_config
from cimpt.export import load_exported_backbone

pytestmark = pytest.mark.usefixtures("one_thread")

PREFIX = "enhancer.backbone."


def _reference_backbone(run: Path) -> torch.nn.Module:
    """The enhancer backbone of the run's newest checkpoint, rebuilt with plain timm."""
    cfg = load_config(run / "config.yaml")
    model = timm.create_model(
        cfg.enhancer.name,
        num_classes=0,
        img_size=cfg.data.img_size,
        patch_size=cfg.enhancer.patch_size,
        **dict(cfg.enhancer.kwargs),
    )
    newest = sorted((run / "checkpoints").glob("step_*"))[-1]
    tensors = load_file(str(newest / "model.safetensors"))
    model.load_state_dict(
        {k[len(PREFIX) :]: v for k, v in tensors.items() if k.startswith(PREFIX)}, strict=True
    )
    return model.eval()


def test_export_rebuilds_the_pretrained_backbone(pretrained_runs, tmp_path, e2e) -> None:
    run = pretrained_runs("respix")
    out = tmp_path / "exported" / "vit.safetensors"
    assert e2e.run_cli(["export", str(run), str(out)]) == 0

    exported = load_exported_backbone(out).eval()
    reference = _reference_backbone(run)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = exported(x), reference(x)
    assert got.shape == (3, 32)  # pooled features of the width-32 ViT, no classifier
    torch.testing.assert_close(got, want, rtol=0, atol=0)

    # What a user does without cimpt: plain timm plus the file, strictly.
    plain = timm.create_model(
        "vit_tiny_patch16_224",
        num_classes=0,
        img_size=32,
        patch_size=4,
        embed_dim=32,
        depth=1,
        num_heads=2,
    )
    plain.load_state_dict(load_file(str(out)), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), want, rtol=0, atol=0)

    # The copy written at the end of pre-training holds the same weights.
    at_end = load_file(str(run / "enhancer.safetensors"))
    for key, value in load_file(str(out)).items():
        torch.testing.assert_close(at_end[key], value, rtol=0, atol=0)


def test_export_refuses_a_tokenizer_checkpoint(tokenizer_run, tmp_path, e2e, capsys) -> None:
    capsys.readouterr()
    assert e2e.run_cli(["export", str(tokenizer_run), str(tmp_path / "x.safetensors")]) == 2
    line = e2e.error_line(capsys.readouterr().err)
    assert "tokenizer" in line and "CIM" in line
    assert not (tmp_path / "x.safetensors").exists()


def _figure(e2e: SimpleNamespace, run: Path, out: Path, n: int) -> Image.Image:
    assert e2e.run_cli(["visualize", str(run), "--out", str(out), "--n", str(n)]) == 0
    with Image.open(out) as img:
        assert img.format == "PNG"
        return img.copy()


@pytest.mark.parametrize(("objective", "columns"), [("respix", 7), ("revdet", 6)])
def test_visualize_draws_n_rows_of_one_tile_per_stage(
    objective: str, columns: int, pretrained_runs, tmp_path, e2e
) -> None:
    run = pretrained_runs(objective)
    two = _figure(e2e, run, tmp_path / "two.png", 2)
    three = _figure(e2e, run, tmp_path / "three.png", 3)
    assert two.width == three.width
    row = three.height - two.height  # one more image adds one row of tiles
    header = two.height - 2 * row
    assert 0 <= header < row // 2  # a thin title strip above the rows
    # Square tiles: the width holds `columns` tiles of one row's height (plus a thin margin).
    assert two.width // row == columns and two.width % row < row // 4
    # Tiles are pictures, not blank canvas.
    tile = three.crop((0, header + row, row, header + 2 * row)).convert("L")
    lo, hi = tile.getextrema()
    assert hi - lo > 20


def test_visualize_and_export_refuse_a_non_checkpoint(tmp_path, e2e, capsys) -> None:
    image = tmp_path / "photo.png"
    e2e.structured_image(0).save(image)
    for argv in (
        ["visualize", str(tmp_path / "missing")],
        ["visualize", str(image)],
        ["visualize", str(tmp_path)],  # a folder without checkpoints
        ["export", str(image), str(tmp_path / "out.safetensors")],
    ):
        capsys.readouterr()
        assert e2e.run_cli(argv) == 2, argv
        e2e.error_line(capsys.readouterr().err)


def test_visualize_needs_at_least_one_image(pretrained_runs, tmp_path, e2e, capsys) -> None:
    run = pretrained_runs("respix")
    capsys.readouterr()
    assert e2e.run_cli(["visualize", str(run), "--n", "0", "--out", str(tmp_path / "v.png")]) == 2
    assert "--n" in e2e.error_line(capsys.readouterr().err)
    assert not (tmp_path / "v.png").exists()
