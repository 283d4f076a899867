"""``enhancer.pretrained``: continued pre-training and fine-tuning from existing weights.

Offline, from a local weights file of the timm model (the path a user without network takes),
and the one-line errors when the weights cannot be had.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from cimpt.config import CONFIG_DIR
from cimpt.engine.checkpoint import latest_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[2]
ALMOST_NO_LR = ("train.lr=1e-30", "train.min_lr=0", "enhancer.drop_path=0")


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    """Weights of the tests' tiny ViT (width 32, one block, 32 px, patch 4), with an
    ImageNet-sized head as released weights have (it must be dropped, not loaded)."""
    torch.manual_seed(123)
    model = timm.create_model(
        "vit_tiny_patch16_224",
        num_classes=1000,
        img_size=32,
        patch_size=4,
        embed_dim=32,
        depth=1,
        num_heads=2,
    )
    path = tmp_path_factory.mktemp("weights") / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _assert_starts_from(tensors: dict, prefix: str, weights: Path) -> None:
    given = load_file(str(weights))
    got = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    shared = [k for k in given if not k.startswith("head.")]
    assert shared and set(shared) <= set(got)
    for k in shared:
        torch.testing.assert_close(got[k], given[k], rtol=0, atol=1e-6, msg=k)


def test_pretraining_continues_from_a_local_weights_file(
    weights_file, cim_overrides, tmp_path, e2e
) -> None:
    run = tmp_path / "cim"
    extra = (f"enhancer.pretrained={weights_file}", *ALMOST_NO_LR)
    argv = ["pretrain", "cifar10_vit", *cim_overrides(run, steps=1, extra=extra)]
    assert e2e.run_cli(argv) == 0
    tensors = load_file(str(latest_checkpoint(run) / "model.safetensors"))
    _assert_starts_from(tensors, "enhancer.backbone.", weights_file)


def test_finetuning_starts_from_a_local_weights_file(
    weights_file, ft_overrides, tmp_path, e2e
) -> None:
    run = tmp_path / "ft"
    extra = ("init.checkpoint=", f"enhancer.pretrained={weights_file}", *ALMOST_NO_LR)
    config = str(CONFIG_DIR / "cifar10_finetune.yaml")
    assert e2e.run_cli(["finetune", config, *ft_overrides(run, steps=1, extra=extra)]) == 0
    tensors = load_file(str(latest_checkpoint(run) / "model.safetensors"))
    _assert_starts_from(tensors, "model.backbone.", weights_file)
    assert tensors["model.backbone.head.weight"].shape == (2, 32)  # a new 2-class head
    # results.json names the weights it started from, not "scratch" (issue 16 walk-through)
    results = json.loads((run / "results.json").read_text())
    assert results["init"] == f"enhancer.pretrained={weights_file}"
    assert results["init_kind"] == "pretrained"


def test_init_record_and_note_name_what_the_backbone_starts_from(capsys) -> None:
    from cimpt.config import load_config, typed
    from cimpt.eval.source import adopt_from_init, init_record

    cfg = load_config(overrides=["init.checkpoint=", "enhancer.pretrained=/w.safetensors"])
    assert adopt_from_init(cfg, "probing") is None
    assert "probing the weights of enhancer.pretrained=/w.safetensors" in capsys.readouterr().out
    assert init_record(typed(cfg).enhancer, None)["init_kind"] == "pretrained"
    cfg = load_config(overrides=["init.checkpoint="])
    assert init_record(typed(cfg).enhancer, None) == {"init": "scratch", "init_kind": "scratch"}


@pytest.mark.parametrize("case", ["missing", "foreign"])
def test_a_bad_weights_file_is_one_line(case, tokenizer_file, cim_overrides, tmp_path, e2e, capsys):
    value = {"missing": tmp_path / "nope.safetensors", "foreign": tokenizer_file}[case]
    run = tmp_path / "cim"
    argv = ["pretrain", "cifar10_vit", *cim_overrides(run, extra=(f"enhancer.pretrained={value}",))]
    assert e2e.run_cli(argv) == 2
    line = e2e.error_line(capsys.readouterr().err)
    assert line.startswith("error: enhancer.pretrained") and str(value) in line
    assert not (run / "checkpoints").exists()


def test_timm_weights_offline_and_not_cached_is_one_line(tmp_path, image_folder, tokenizer_file):
    """No network and an empty Hugging Face cache: the message says what to do instead."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "TORCH_HOME": str(tmp_path / "torch"),
        "PYTHONPATH": str(REPO / "src"),
    }
    argv = [
        sys.executable,
        "-m",
        "cimpt.cli",
        "pretrain",
        "cifar10_vit",
        f"data.path={image_folder}",
        f"tokenizer.checkpoint={tokenizer_file}",
        f"run.dir={tmp_path / 'run'}",
        "enhancer.pretrained=timm",
        "enhancer.kwargs={}",
    ]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("note:")]
    assert len(lines) == 1 and lines[0].startswith("error: enhancer.pretrained=timm"), lines
    assert "vit_tiny_patch16_224" in lines[0] and "local weights file" in lines[0]
