"""bench/tokenizer_64px.py: the quick study end to end on tiny images (a curve per recipe,
a rerun that reuses every job), its budgets, its bad input, and the shipped 64 px config."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cimpt.config import CONFIG_DIR, load_config, tokenizer_resolution, typed
from cimpt.tokenizers.load import load_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.timeout(300)
def test_quick_study_curves_and_reuse(
    image_folder: Path, tmp_path: Path, e2e: SimpleNamespace
) -> None:
    bench = e2e.import_bench("tokenizer_64px")
    out, work = tmp_path / "out", tmp_path / "w"
    args = ["--preset", "quick", "--in-process", "--threads", "1",
            "--data", str(image_folder), "--val-data", str(image_folder),
            "--recipes", "base-ds8,ds4", "--add-recipe", "lr1e-3: train.lr=1e-3",
            "--work", str(work), "--out", str(out)]  # fmt: skip
    assert bench.main(args) == 0
    payload = json.loads((out / "tokenizer_64px.json").read_text())
    recs = {r["recipe"]: r for r in payload["recipes"]}
    assert list(recs) == ["base-ds8", "ds4", "lr1e-3"]
    assert payload["meta"]["progress"] == "3 of 3"
    assert (recs["base-ds8"]["grid"], recs["ds4"]["grid"]) == (2, 4)  # 16 px views
    for r in recs.values():
        steps = [p["steps"] for p in r["curve"]]
        assert steps == [2, 4] and r["steps"] == 4 and r["images_seen"] == 16
        assert all(math.isfinite(p["psnr"]) and 0 <= p["usage"] <= 1 for p in r["curve"])
        assert all(p["colour_kept"] >= 0 for p in r["curve"])  # random-colour test images
        assert r["curve"][-1]["minutes"] > r["curve"][0]["minutes"] > 0
        assert r["cpu_minutes"] > 0 and not r["cost"]["reused"]
        assert r["precision"] == "fp32"  # the run's own record (auto is fp32 in tests)
        assert r["verdict"].startswith(("good", "usable", "weak"))
        assert (out / "tokenizer_64px" / f"{r['recipe']}_recon.png").is_file()
        # the verdict cimpt pretrain reads sits next to the exported tokenizer
        final = json.loads((work / r["recipe"] / "tokenizer_eval.json").read_text())
        assert final["psnr"] == pytest.approx(r["final"]["psnr"])
        assert (work / r["recipe"] / "tokenizer_recon.png").is_file()
    # the last checkpoint, which the curve's last point evaluated, is the exported tokenizer
    exported = load_tokenizer(work / "base-ds8" / "tokenizer.safetensors").state_dict()
    last = load_tokenizer(work / "base-ds8" / "checkpoints" / "step_00000004")
    assert all(torch.equal(v, last.state_dict()[k]) for k, v in exported.items())
    assert "train.lr=1e-3" in recs["lr1e-3"]["argv"]
    table = (out / "tokenizer_64px.md").read_text()
    assert "| base-ds8 | 16 px / 2x2 | 4 |" in table and "- ds4: " in table
    # a rerun reuses every job and gives the same curves
    assert bench.main(args) == 0
    again = json.loads((out / "tokenizer_64px.json").read_text())["recipes"]
    assert all(r["cost"]["reused"] for r in again)
    assert [r["curve"] for r in again] == [recs[r["recipe"]]["curve"] for r in again]


def test_full_budget_checkpoints_and_warmup(e2e: SimpleNamespace) -> None:
    bench = e2e.import_bench("tokenizer_64px")
    p = bench.PRESETS["full"]
    s = bench.Study(Path("d"), Path("v"), Path("w"), p, 367, 2, p.budget_s)
    assert s.steps(0.75) == 1600
    value = dict(a.split("=", 1) for a in s.train_argv((), Path("w/base"), 1600)[3:])
    assert (value["run.ckpt_every"], value["run.keep_last"]) == ("320", "7")
    assert float(value["train.warmup_epochs"]) * (367 // 64) == pytest.approx(80)
    assert value["data.val_path"] == "" and value["tokenizer.downsample"] == "8"
    for name, overrides in bench.RECIPES.items():  # every recipe is a valid 64 px config
        argv = s.train_argv(overrides, Path("w") / name, 1600)
        cfg = typed(load_config(CONFIG_DIR / "cifar10_tokenizer.yaml", argv[3:]))
        assert tokenizer_resolution(cfg) == 64, name


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--data", "{tmp}/none"], ("--data", "is not a folder")),
        (["--val-data", "{tmp}"], ("--val-data", "holds no images")),
        (["--recipes", "base-ds8,nope"], ("--recipes", "nope")),
        (["--add-recipe", "bad name: x"], ("--add-recipe", "NAME: key=value")),
        (["--recipes", ""], ("--recipes", "no recipe")),
    ],
)
def test_bad_input_is_one_error_line(
    extra: list[str], words: tuple[str, ...], image_folder: Path, tmp_path: Path, capsys, e2e
) -> None:
    bench = e2e.import_bench("tokenizer_64px")
    args = ["--data", str(image_folder), "--val-data", str(image_folder),
            "--work", str(tmp_path / "w"), "--out", str(tmp_path / "out")]  # fmt: skip
    args += [a.replace("{tmp}", str(tmp_path)) for a in extra]
    assert bench.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and all(w in err[0] for w in words)
    assert not (tmp_path / "w").exists()


def test_shipped_64px_config_is_the_ds4_chroma4_recipe(e2e: SimpleNamespace) -> None:
    """configs/tokenizer_64px.yaml is the study's measured ``ds4-chroma4``: the same tokenizer,
    views and optimiser as cifar10_tokenizer.yaml with the study's base and recipe overrides."""
    bench = e2e.import_bench("tokenizer_64px")
    shipped = typed(load_config(CONFIG_DIR / "tokenizer_64px.yaml"))
    overrides = [*bench.BASE, *bench.RECIPES["ds4-chroma4"]]
    study = typed(load_config(CONFIG_DIR / "cifar10_tokenizer.yaml", overrides))
    assert shipped.tokenizer == study.tokenizer
    assert shipped.tokenizer.chroma_weight == 4.0
    assert shipped.data.img_size == study.data.img_size == 64
    assert list(shipped.data.crop_scale) == list(study.data.crop_scale)
    assert (shipped.train.batch_size, shipped.train.lr) == (study.train.batch_size, study.train.lr)
    assert shipped.enhancer.patch_size == study.enhancer.patch_size == 4
    assert tokenizer_resolution(shipped) == 64
