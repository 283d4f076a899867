"""The quick pass of bench/camvid_segmentation.py end to end on tiny generated folders: one
row per backbone x init, encoders given (ViT) or made with the evidence study's jobs
(ResNet), an extra named encoder, and a rerun that reuses every finished job."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from seg_files import write_split

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.timeout(300)
def test_quick_study_rows_and_reuse(
    tmp_path: Path,
    image_folder: Path,
    pretrained_runs: Callable[[str], Path],
    e2e: Any,
) -> None:
    camvid = tmp_path / "camvid"
    write_split(camvid / "train", 4, seed=0, ignore=11)  # CamVid's void id
    write_split(camvid / "test", 2, seed=50, ignore=11)
    respix, revdet = pretrained_runs("respix"), pretrained_runs("revdet")
    args = [
        "--preset", "quick", "--in-process", "--camvid", str(camvid),
        "--encoder", f"vit:cim-respix={respix}", "--encoder", f"vit:cim-revdet={revdet}",
        "--encoder", f"vit:other={revdet}",
        "--cifar", str(image_folder), "--evidence-work", str(tmp_path / "evidence"),
        "--work", str(tmp_path / "w"), "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    bench = e2e.import_bench("camvid_segmentation")
    assert bench.main(args) == 0
    rows = json.loads((tmp_path / "out" / "camvid_segmentation.json").read_text())["rows"]
    got = {(r["backbone"].split()[0], r["init"]) for r in rows}
    assert got == {
        *(("tiny", i) for i in ("scratch", "cim-respix", "cim-revdet", "other")),
        *(("ResNet-10t", i) for i in ("scratch", "cim-respix", "cim-revdet")),
    }
    for r in rows:
        assert (r["config"]["init"]["checkpoint"] == "") == (r["init"] == "scratch")
        assert r["config"]["segment"]["layer_decay"] == 1.0 and r["steps"] == 2
        assert 0 <= r["miou"] <= 100 and r["test_images"] == 2
        # pinned, not the machine's auto; and read back from what the run recorded
        assert r["config"]["train"]["amp"] == "none" and r["precision"] == "fp32"
    made = [r for r in rows if "ResNet" in r["backbone"] and r["init"] != "scratch"]
    assert all(r["encoder"].startswith(str(tmp_path / "evidence")) for r in made)
    assert all(r["pretrain"]["objective"] in r["init"] for r in made)
    table = (tmp_path / "out" / "camvid_segmentation.md").read_text()
    assert "| scratch |" in table and "Per-class IoU" in table
    assert "train.amp=none (fp32)" in table
    # a rerun reuses every finished job and gives the same table
    assert bench.main(args) == 0
    again = json.loads((tmp_path / "out" / "camvid_segmentation.json").read_text())["rows"]
    assert all(r["reused"] for r in again)
    assert [r["miou"] for r in again] == [r["miou"] for r in rows]


def test_comparison_backbone_plans_named_encoders_only(tmp_path: Path, e2e: Any) -> None:
    """``vit192`` (the method comparison's encoder) has no evidence-study encoders: its rows are
    scratch plus the ``--encoder`` ones, and nothing is pre-trained for it."""
    bench = e2e.import_bench("camvid_segmentation")
    plan = bench.plan_backbone(None, "vit192", {"mae": "runs/m", "cim-revdet": "runs/c"}, tmp_path)
    assert plan == [("scratch", "", None), ("cim-revdet", "runs/c", None), ("mae", "runs/m", None)]
    kwargs = next(a for a in bench.BACKBONES["vit192"].arch if a.startswith("enhancer.kwargs"))
    assert "embed_dim: 192" in kwargs and "depth: 6" in kwargs
    # --amp other than the default fp32 gets its own run folders and its override
    for amp, suffix in (("none", ""), ("bf16", "_ampbf16")):
        a = bench.parse_args(["--backbones", "vit192", "--amp", amp])
        job = bench.seg_job(a, "vit192", "scratch", "", 0, tmp_path)
        assert job.run_dir.name == f"vit192_scratch_seed0{suffix}"
        assert f"train.amp={amp}" in job.argv


@pytest.mark.timeout(300)
def test_in_domain_pretraining_charges_the_tokenizer_and_segments_each_arm(
    tmp_path: Path, e2e: Any
) -> None:
    camvid = tmp_path / "camvid"
    write_split(camvid / "train", 4, seed=0, ignore=11)
    write_split(camvid / "test", 2, seed=50, ignore=11)
    tok = e2e.write_tokenizer(tmp_path / "tok" / "tokenizer.safetensors", downsample=4)
    record = tmp_path / "tokenizer_64px.json"
    recipe = {"recipe": "ds4", "run_dir": str(tok.parent), "cost": {"wall_s": 3.0}}
    record.write_text(json.dumps({"recipes": [recipe]}))
    args = [
        "--preset", "quick", "--in-process", "--camvid", str(camvid), "--budget-min", "0.1",
        "--batch", "2", "--calib-steps", "1", "--seeds", "0", "--tokenizer-record", str(record),
        "--work", str(tmp_path / "w"), "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    bench = e2e.import_bench("camvid_pretrain")
    assert bench.main(args) == 0
    pre = json.loads((tmp_path / "w" / "pretrain.json").read_text())
    # 6 s each; the CIM arm pays the tokenizer's 3 s out of its budget, MAE does not.
    assert pre["budget_s"] == pytest.approx(6.0) and pre["tokenizer_charge_s"] == 3.0
    for arm, own in (("cim-revdet", 3.0), ("mae", 6.0)):
        steps = pre[arm]["steps"]
        assert steps == max(1, int(own / pre["s_per_step"][arm]))
        assert pre[arm]["last"]["step"] == steps
        # warm-up: a tenth of the steps, given in epochs of 4 frames at batch 2 (2 steps each)
        cfg = yaml.safe_load((tmp_path / "w" / arm / "config.yaml").read_text())
        assert round(cfg["train"]["warmup_epochs"] * 2) == max(1, steps // 10)
    rows = json.loads((tmp_path / "out" / "camvid_indomain.json").read_text())["rows"]
    assert {r["init"] for r in rows} == {"scratch", "camvid-cim-revdet", "camvid-mae"}
    for r in rows:  # each pre-trained arm segments from its own run
        own = "scratch" if r["init"] == "scratch" else str(tmp_path / "w" / r["init"][7:])
        assert r["encoder"].startswith(own)  # the run, resolved to its last checkpoint
    # the saved calibration belongs to its budget: another one needs another --work
    other = [
        *args[: args.index("--budget-min") + 1],
        "0.2",
        *args[args.index("--budget-min") + 2 :],
    ]
    assert bench.main(other) == 2


def test_in_domain_pretraining_names_a_missing_tokenizer_recipe(
    tmp_path: Path, e2e: Any, capsys: pytest.CaptureFixture
) -> None:
    record = tmp_path / "tokenizer_64px.json"
    record.write_text(json.dumps({"recipes": []}))
    bench = e2e.import_bench("camvid_pretrain")
    args = ["--tokenizer-record", str(record), "--work", str(tmp_path / "w")]
    assert bench.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --tokenizer-recipe: 'ds4'") and len(err.splitlines()) == 1


def test_recipe_flags_have_their_own_run_folders(
    tmp_path: Path, e2e: Any, capsys: pytest.CaptureFixture
) -> None:
    """``--layer-decay``, ``--blr`` and ``--steps`` change every row's recipe, scratch included,
    and keep those runs apart from the default recipe's so both can share one ``--work``; a
    value out of range is one error line."""
    bench = e2e.import_bench("camvid_segmentation")
    off = bench.seg_job(bench.parse_args([]), "vit192", "scratch", "", 1, tmp_path)
    on = bench.seg_job(
        bench.parse_args(["--layer-decay", "0.65"]), "vit192", "mae", "m", 1, tmp_path
    )
    assert off.run_dir == tmp_path / "vit192_scratch_seed1"
    assert on.run_dir == tmp_path / "vit192_mae_seed1_ld0.65"
    assert "segment.layer_decay=1" in off.argv and "segment.layer_decay=0.65" in on.argv
    assert not any(x.startswith("train.blr=") for x in off.argv + on.argv)
    both = bench.parse_args(["--layer-decay", "0.65", "--blr", "0.02"])
    job = bench.seg_job(both, "vit192", "scratch", "", 0, tmp_path)
    assert job.run_dir == tmp_path / "vit192_scratch_seed0_ld0.65_blr0.02"
    assert "train.blr=0.02" in job.argv and "segment.layer_decay=0.65" in job.argv
    assert [x for x in off.argv if x.startswith("train.max_steps=")] == ["train.max_steps=450"]
    longer = bench.seg_job(bench.parse_args(["--steps", "1350"]), "vit192", "mae", "m", 2, tmp_path)
    assert longer.run_dir == tmp_path / "vit192_mae_seed2_steps1350"
    assert [x for x in longer.argv if x.startswith("train.max_steps=")] == ["train.max_steps=1350"]
    camvid = tmp_path / "camvid"
    for split in ("train", "test"):
        (camvid / split / "images").mkdir(parents=True)
    bad_flags = (("--layer-decay", "0"), ("--layer-decay", "1.5"), ("--blr", "0"), ("--steps", "0"))
    for flag, bad in bad_flags:
        args = [flag, bad, "--camvid", str(camvid), "--backbones", "vit192"]
        assert bench.main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {flag} {bad}:") and len(err.splitlines()) == 1
