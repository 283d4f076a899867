"""End-to-end tests of ``cimpt linprobe`` and ``cimpt knn`` on tiny labelled images.

The linear probe must leave every backbone weight as pre-trained (MAE's protocol: frozen
features, BatchNorm without affine + linear head); kNN must report k = 20 and 200 and take
its architecture from the checkpoint, whatever the config says.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from cimpt.config import CONFIG_DIR
from cimpt.engine.checkpoint import latest_checkpoint

CONFIGS = CONFIG_DIR
pytestmark = pytest.mark.usefixtures("one_thread")


def test_linprobe_trains_only_the_head(
    pretrained_runs, ft_overrides, tmp_path: Path, e2e: SimpleNamespace
) -> None:
    pre = pretrained_runs("respix")
    run = tmp_path / "lp"
    code = e2e.run_cli(
        [
            "linprobe",
            str(CONFIGS / "cifar10_linprobe.yaml"),
            *ft_overrides(run, steps=6, extra=(f"init.checkpoint={pre}",)),
        ]
    )
    assert code == 0
    before = load_file(str(latest_checkpoint(pre) / "model.safetensors"))
    after = load_file(str(latest_checkpoint(run) / "model.safetensors"))
    backbone = {
        k[len("model.backbone.") :]: v for k, v in after.items() if k.startswith("model.backbone.")
    }
    assert backbone
    for k, v in backbone.items():
        assert torch.equal(v, before[f"enhancer.backbone.{k}"]), k
    head = {k: v for k, v in after.items() if k.startswith("model.head.")}
    # BatchNorm without affine parameters (running stats only) and a 2-way linear layer.
    assert head["model.head.1.weight"].shape == (2, 32)
    assert "model.head.0.weight" not in head and "model.head.0.running_mean" in head
    res = json.loads((run / "results.json").read_text())
    assert res["kind"] == "linprobe" and 0 <= res["last"]["top1"] <= 100


def test_knn_reports_both_k_and_adopts_the_checkpoint_architecture(
    pretrained_runs, ft_overrides, tmp_path: Path, e2e: SimpleNamespace
) -> None:
    pre = pretrained_runs("revdet")
    run = tmp_path / "knn"
    # The config asks for another width; kNN evaluates what the checkpoint holds.
    extra = (f"init.checkpoint={pre}", "enhancer.kwargs={embed_dim: 64, depth: 2, num_heads: 2}")
    assert (
        e2e.run_cli(
            ["knn", str(CONFIGS / "cifar10_finetune.yaml"), *ft_overrides(run, extra=extra)]
        )
        == 0
    )
    res = json.loads((run / "knn.json").read_text())
    assert set(res["top1"]) == {"20", "200"}
    assert res["train_images"] == 24 and res["val_images"] == 12
    for v in res["top1"].values():
        assert v * 12 / 100 == pytest.approx(round(v * 0.12))  # a count of 12 images
    saved = (run / "config.yaml").read_text()
    assert "embed_dim: 32" in saved  # the architecture that was really evaluated


def test_knn_missing_checkpoint_is_one_line(
    ft_overrides, tmp_path: Path, e2e: SimpleNamespace, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "knn"
    capsys.readouterr()
    code = e2e.run_cli(
        [
            "knn",
            str(CONFIGS / "cifar10_finetune.yaml"),
            *ft_overrides(run, extra=(f"init.checkpoint={tmp_path / 'none'}",)),
        ]
    )
    assert code == 2
    assert "does not exist" in e2e.error_line(capsys.readouterr().err)
    assert not run.exists()


def test_knn_without_run_dir_leaves_the_config_run_alone(
    pretrained_runs, image_folder, val_folder, tmp_path: Path, monkeypatch, e2e, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = [
        "knn",
        "cifar10_finetune",  # its run.dir is runs/cifar10_finetune, another run's
        f"init.checkpoint={pretrained_runs('revdet')}",
        f"data.path={image_folder}",
        f"data.val_path={val_folder}",
        "data.num_workers=0",
        "run.progress=false",
    ]
    assert e2e.run_cli(argv) == 0
    assert "note: writing to runs/knn" in capsys.readouterr().out
    assert (tmp_path / "runs" / "knn" / "knn.json").is_file()
    assert not (tmp_path / "runs" / "cifar10_finetune").exists()
    # Nor into a run directory given as the config (its config.yaml stays the run's).
    pre = pretrained_runs("revdet")
    before = (pre / "config.yaml").read_text()
    assert e2e.run_cli(["knn", str(pre), *argv[2:]]) == 0
    assert (pre / "config.yaml").read_text() == before and not (pre / "knn.json").exists()
    # An earlier kNN run directory is the place to write again.
    capsys.readouterr()
    assert e2e.run_cli(["knn", "runs/knn", *argv[2:]]) == 0
    assert "note: writing" not in capsys.readouterr().out
