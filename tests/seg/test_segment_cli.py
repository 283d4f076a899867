"""End-to-end ``cimpt segment`` through ``cimpt.cli.main`` on tiny generated folders.

What a user relies on: the encoder really starts from the pre-trained weights (position
embeddings resampled to the crop's grid), every init kind of ``cimpt finetune`` works,
metrics of the whole val split reach metrics.jsonl and results.json, a figure is drawn,
``resume=auto`` continues, and a mismatched architecture is one ``error:`` line.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file
from seg_files import SEG_CONFIG

from cimpt.config import load_config
from cimpt.engine.checkpoint import latest_checkpoint
from cimpt.seg.task import build_segment_task

pytestmark = pytest.mark.usefixtures("one_thread")


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_scratch_run_writes_metrics_results_figure_and_resumes(
    seg_args: Callable[..., list[str]], tmp_path: Path, e2e: SimpleNamespace
) -> None:
    run = tmp_path / "seg"
    assert e2e.run_cli(seg_args(run, steps=2)) == 0
    res = json.loads((run / "results.json").read_text())
    assert res["kind"] == "segment" and res["init_kind"] == "scratch"
    assert res["classes"] == ["a", "b", "c"] and res["val_images"] == 3
    last = res["last"]
    assert set(last["per_class_iou"]) == {"a", "b", "c"} and last["step"] == 2
    assert 0 <= last["miou"] <= 100 and 0 <= last["pixel_acc"] <= 100
    evals = [r for r in _records(run) if "val_miou" in r]
    assert evals[-1]["val_miou"] == pytest.approx(last["miou"], abs=1e-3)
    assert {"val_iou/a", "val_pixel_acc", "best_miou"} <= set(evals[-1])
    assert (run / "figures" / "segment_000002.png").is_file()
    # resume=auto continues the same run to a longer budget: one record per step
    assert e2e.run_cli(["segment", str(run), "resume=auto", "train.max_steps=4"]) == 0
    steps = [r["step"] for r in _records(run) if "loss" in r]
    assert steps == [1, 2, 3, 4]
    assert json.loads((run / "results.json").read_text())["last"]["step"] == 4


def _tiny_pretrain_args(seg_args: Callable[..., list[str]], init: Path) -> list[str]:
    return [*seg_args(Path("/unused"))[2:], f"init.checkpoint={init}"]


def test_encoder_starts_from_the_pretrained_weights(
    pretrained_runs: Callable[[str], Path],
    seg_args: Callable[..., list[str]],
    tmp_path: Path,
    e2e: SimpleNamespace,
) -> None:
    pre = pretrained_runs("revdet")  # tiny ViT at 32 px (8x8 grid); segmentation crops 16 px
    exported = tmp_path / "enhancer.safetensors"
    assert e2e.run_cli(["export", str(pre), str(exported)]) == 0
    source = {
        k.removeprefix("enhancer.backbone."): v
        for k, v in load_file(str(latest_checkpoint(pre) / "model.safetensors")).items()
        if k.startswith("enhancer.backbone.")
    }
    for init, kind in ((pre, "cim"), (exported, "export")):
        cfg = load_config(SEG_CONFIG, _tiny_pretrain_args(seg_args, init))
        task = build_segment_task(cfg)
        assert task.source is not None and task.source.kind == kind
        got = task.seg.net.backbone.net.state_dict()
        for k, v in source.items():
            if k == "pos_embed":  # 1 + 8*8 positions resampled to 1 + 4*4
                assert got[k].shape == (1, 17, 32)
                torch.testing.assert_close(got[k][:, 0], v[:, 0])
            elif k in got:  # the final norm is pruned (the levels are read before it)
                torch.testing.assert_close(got[k], v, msg=k)
        assert set(source) - set(got) == {"norm.weight", "norm.bias"}


def test_a_run_from_a_pretraining_run_adopts_its_architecture(
    pretrained_runs: Callable[[str], Path],
    seg_args: Callable[..., list[str]],
    tmp_path: Path,
    e2e: SimpleNamespace,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pre = pretrained_runs("respix")
    run = tmp_path / "seg"
    assert e2e.run_cli([*seg_args(run, steps=1), f"init.checkpoint={pre}"]) == 0
    res = json.loads((run / "results.json").read_text())
    assert res["init_kind"] == "cim" and res["init"].startswith(str(pre))
    assert OmegaConf.load(run / "config.yaml").init.checkpoint == str(pre)
    capsys.readouterr()
    # The checkpoint decides the backbone (as for finetune): another width is replaced by
    # the checkpoint's with a note; the crop size (data.img_size) stays the config's.
    wide = "enhancer.kwargs={embed_dim: 64, depth: 1, num_heads: 2}"
    other = tmp_path / "wide"
    assert e2e.run_cli([*seg_args(other, steps=1), f"init.checkpoint={pre}", wide]) == 0
    assert "note: enhancer.kwargs=" in capsys.readouterr().out
    cfg = OmegaConf.load(other / "config.yaml")
    assert cfg.enhancer.kwargs.embed_dim == 32
    assert cfg.data.img_size == OmegaConf.load(run / "config.yaml").data.img_size


def test_layer_decay_scales_the_vit_backbone_only(seg_args: Callable[..., list[str]]) -> None:
    cfg = load_config(SEG_CONFIG, [*seg_args(Path("/unused"))[2:], "segment.layer_decay=0.5"])
    task = build_segment_task(cfg)
    groups = task.param_groups(0.05)
    assert groups is not None
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    params = dict(task.seg.named_parameters())
    assert sum(len(g["params"]) for g in groups) == len(params) == len(scale)  # each once
    # BEiT's rule at depth 1: embeddings 0.5 ** 2, the block 0.5 ** 1, the decoder 1
    assert scale[id(params["net.backbone.net.pos_embed"])] == pytest.approx(0.25)
    assert scale[id(params["net.backbone.net.blocks.0.attn.qkv.weight"])] == pytest.approx(0.5)
    decoder = [n for n in params if not n.startswith("net.backbone.net.")]
    assert decoder and all(scale[id(params[n])] == 1.0 for n in decoder)
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert id(params["net.backbone.net.pos_embed"]) in no_decay
    cnn = [*seg_args(Path("/unused"))[2:], "enhancer.name=resnet10t", "data.img_size=32",
           "enhancer.patch_size=8", "enhancer.kwargs={}"]  # fmt: skip
    assert build_segment_task(load_config(SEG_CONFIG, cnn)).param_groups(0.05) is None
