"""CIM with any timm backbone (Fang et al. 2023: "both ViT and CNN"), end to end on tiny data.

Parametrized over one model of each family (timm's ``tests/test_models.py`` style): a ViT, a
ResNet, a ConvNeXt and an EfficientNet. Each builds, runs one pre-training step with each
objective, exports, and the export loads into the plain timm model with exactly the trained
backbone weights; a pre-trained CNN then fine-tunes.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch
from safetensors.torch import load_file

from cimpt.engine.checkpoint import latest_checkpoint
from cimpt.export import load_exported_backbone

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = {
    "vit": ("vit_tiny_patch16_224", "{embed_dim: 32, depth: 1, num_heads: 2}"),
    "resnet": ("resnet18", "{}"),
    "convnext": ("convnext_atto", "{}"),
    "efficientnet": ("efficientnet_b0", "{}"),
}


def _arch(family: str) -> list[str]:
    name, kwargs = FAMILIES[family]
    return [f"enhancer.name={name}", f"enhancer.kwargs={kwargs}", "enhancer.neck_dim=16"]


@pytest.mark.parametrize("objective", ["respix", "revdet"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_one_step_export_and_reload(
    family: str, objective: str, cim_overrides, tmp_path: Path, e2e: SimpleNamespace
) -> None:
    run = tmp_path / "run"
    argv = [
        "pretrain",
        str(e2e.CIM_CONFIG),
        *cim_overrides(run, objective=objective, steps=1, extra=_arch(family)),
    ]
    assert e2e.run_cli(argv) == 0
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert torch.isfinite(torch.tensor(metrics[-1]["enh_loss"]))

    out = tmp_path / "enc.safetensors"
    assert e2e.run_cli(["export", str(run), str(out)]) == 0
    model = load_exported_backbone(out)
    assert type(model) is type(timm.create_model(FAMILIES[family][0], num_classes=0))
    trained = load_file(str(latest_checkpoint(run) / "model.safetensors"))
    exported = model.state_dict()
    backbone = {
        k[len("enhancer.backbone.") :]: v
        for k, v in trained.items()
        if k.startswith("enhancer.backbone.")
    }
    assert set(exported) == set(backbone)  # the neck and heads are not exported
    for k, v in backbone.items():
        assert torch.equal(exported[k], v), k
    assert model(torch.randn(2, 3, 32, 32)).shape[0] == 2


def test_pretrained_cnn_fine_tunes(
    cim_overrides, image_folder: Path, tmp_path: Path, e2e: SimpleNamespace
) -> None:
    pre = tmp_path / "pre"
    assert (
        e2e.run_cli(
            ["pretrain", str(e2e.CIM_CONFIG), *cim_overrides(pre, steps=1, extra=_arch("resnet"))]
        )
        == 0
    )
    run = tmp_path / "ft"
    argv = [
        "finetune",
        str(e2e.CIM_CONFIG.with_name("cifar10_finetune.yaml")),
        f"run.dir={run}",
        f"init.checkpoint={pre}",
        f"data.path={image_folder}",
        f"data.val_path={image_folder}",
        *_arch("resnet"),
        "train.batch_size=4",
        "train.max_steps=2",
        "data.num_workers=0",
        "run.progress=false",
        "run.tensorboard=false",
        "eval.batch_size=8",
    ]
    assert e2e.run_cli(argv) == 0
    res = json.loads((run / "results.json").read_text())
    assert res["init_kind"] == "cim" and 0 <= res["last"]["top1"] <= 100
    tuned = load_file(str(latest_checkpoint(run) / "model.safetensors"))
    assert tuned["model.backbone.fc.weight"].shape == (2, 512)  # resnet18's classifier, 2 classes


@pytest.mark.parametrize(
    ("extra", "expect"),
    [
        (
            [
                "enhancer.name=resnet18",
                "enhancer.kwargs={}",
                "enhancer.patch_size=12",
                "data.img_size=48",
            ],
            "enhancer.patch_size: 12 is not a feature stride of 'resnet18'",
        ),
        (["enhancer.name=resnet_nope"], "enhancer.name: 'resnet_nope' is not a timm model"),
    ],
)
def test_unusable_backbone_is_one_line_before_any_work(
    extra: list[str],
    expect: str,
    cim_overrides,
    tmp_path: Path,
    e2e: SimpleNamespace,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "run"
    capsys.readouterr()
    # patch 16 at 48 px: a 3x3 grid; the tokenizer view must match it (3 x 4 = 12 px).
    argv = ["pretrain", str(e2e.CIM_CONFIG), *cim_overrides(run, steps=1, extra=extra)]
    assert e2e.run_cli(argv) == 2
    line = e2e.error_line(capsys.readouterr().err)
    assert expect in line, line
    assert not run.exists()
