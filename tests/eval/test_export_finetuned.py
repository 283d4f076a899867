"""``cimpt export`` of a fine-tuned classifier, and what an export tells timm.

What a user relies on: a fine-tuning run exports as the plain timm classifier (backbone and
head) that gives the same logits as the run's best weights; the export carries the training
resolution and normalization, so ``timm.data.resolve_model_data_config`` is right; and the
folder form loads with ``timm.create_model("local-dir:...")`` and holds no local paths.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file

from cimpt.config import CONFIG_DIR
from cimpt.export import load_exported_backbone

CONFIG = CONFIG_DIR / "cifar10_finetune.yaml"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ft_run(tmp_path_factory, ft_overrides, e2e: SimpleNamespace) -> Path:
    """A 2-step fine-tuning run from scratch, ViT width 32, two classes."""
    run = tmp_path_factory.mktemp("ft_export")
    with e2e.single_thread():
        code = e2e.run_cli(
            ["finetune", str(CONFIG), *ft_overrides(run, steps=2, extra=("init.checkpoint=",))]
        )
    assert code == 0
    return run


def _logits_of_best(run: Path, x: torch.Tensor) -> torch.Tensor:
    """The run's best classifier rebuilt with plain timm from best.safetensors (reference)."""
    state = load_file(str(run / "best.safetensors"))
    model = timm.create_model(
        "vit_tiny_patch16_224",
        num_classes=2,
        img_size=32,
        patch_size=4,
        embed_dim=32,
        depth=1,
        num_heads=2,
        global_pool="avg",
        fc_norm=False,
    )
    model.load_state_dict({k[len("backbone.") :]: v for k, v in state.items()}, strict=True)
    with torch.no_grad():
        return model.eval()(x)


def test_a_finetuned_run_exports_as_the_timm_classifier(ft_run, tmp_path, e2e, capsys) -> None:
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    want = _logits_of_best(ft_run, x)
    out = tmp_path / "clf.safetensors"
    assert e2e.run_cli(["export", str(ft_run), str(out)]) == 0
    assert "best" in capsys.readouterr().out  # says which weights it took
    for source in (out, ft_run / "best.safetensors"):
        model = load_exported_backbone(source).eval()
        with torch.no_grad():
            torch.testing.assert_close(model(x), want, rtol=0, atol=0)
        assert model.pretrained_cfg["label_names"] == ("cats", "dogs")


def test_export_carries_the_training_preprocessing(pretrained_runs, tmp_path, e2e) -> None:
    run = pretrained_runs("respix")
    out = tmp_path / "enc.safetensors"
    assert e2e.run_cli(["export", str(run), str(out)]) == 0
    cfg = timm.data.resolve_model_data_config(load_exported_backbone(out))
    assert cfg["input_size"] == (3, 32, 32)
    assert cfg["mean"] == pytest.approx((0.485, 0.456, 0.406))
    assert cfg["std"] == pytest.approx((0.229, 0.224, 0.225))
    assert cfg["interpolation"] == "bicubic" and cfg["crop_pct"] == 1.0


def test_export_folder_loads_with_timm_local_dir(ft_run, tmp_path, e2e) -> None:
    folder = tmp_path / "my_classifier"
    assert e2e.run_cli(["export", str(ft_run / "best.safetensors"), str(folder)]) == 0
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    # No local path of the run (data, run dir, tmp dirs) in anything written.
    for name in ("config.json", "README.md"):
        assert str(tmp_path.parent.parent) not in (folder / name).read_text()
    meta = json.loads(json.dumps(load_exported_backbone(folder).pretrained_cfg, default=str))
    assert meta["num_classes"] == 2
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        assert str(tmp_path.parent.parent) not in json.dumps(f.metadata())

    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), _logits_of_best(ft_run, x), rtol=0, atol=0)
    cfg = timm.data.resolve_model_data_config(model)
    assert tuple(cfg["input_size"]) == (3, 32, 32)  # JSON keeps lists; timm accepts them
    assert tuple(cfg["mean"]) == pytest.approx((0.485, 0.456, 0.406))
    transform = timm.data.create_transform(**cfg)
    assert transform(Image.new("RGB", (50, 40))).shape == (3, 32, 32)


def test_a_finetuned_export_initializes_knn(ft_run, val_folder, image_folder, tmp_path, e2e):
    out = tmp_path / "clf.safetensors"
    assert e2e.run_cli(["export", str(ft_run), str(out)]) == 0
    knn_dir = tmp_path / "knn"
    code = e2e.run_cli(
        [
            "knn",
            str(CONFIG),
            f"init.checkpoint={out}",
            f"data.path={image_folder}",
            f"data.val_path={val_folder}",
            f"run.dir={knn_dir}",
            "data.num_workers=0",
            "run.progress=false",
        ]
    )
    assert code == 0
    assert (knn_dir / "knn.json").is_file()


@pytest.mark.parametrize(
    ("objective", "named"), [("mae", "MAE (He"), ("revdet", "REVDET"), ("simmim", "SimMIM")]
)
def test_model_card_names_the_pretraining_objective(objective, named, tmp_path) -> None:
    """An MAE run's export folder must not call itself CIM (issue 16 walk-through)."""
    from cimpt.config import load_config
    from cimpt.export import Exportable, write_export_folder

    cfg = load_config(overrides=[f"objective={objective}"])
    model = timm.create_model("resnet10t", num_classes=0)
    item = Exportable(model.state_dict(), {"model_name": "resnet10t", "num_classes": 0}, cfg)
    card = (write_export_folder(item, tmp_path / "m") / "README.md").read_text()
    assert named in card and ("Corrupted" in card) == (objective == "revdet")
