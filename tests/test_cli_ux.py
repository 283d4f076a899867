"""A user's own images, start to finish (issue 16): paths, shipped configs, the command line.

Each test does what a user does: run the command on their folder, from anywhere, and expects
either the work or one ``error:`` line before any work (nothing written).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from cimpt.config import load_config

pytestmark = pytest.mark.usefixtures("one_thread")


def test_tokenizer_train_without_its_val_folder_trains_and_says_so(
    image_folder, tmp_path, monkeypatch, e2e, capsys
) -> None:
    """The issue's command: the config's data.val_path (CIFAR-10's test folder) is absent."""
    monkeypatch.setenv("HOME", str(tmp_path))  # a home without the CIFAR-10 folders
    run = tmp_path / "tok"
    overrides = [o for o in e2e.tiny_tokenizer_overrides(run, image_folder) if "val_path" not in o]
    assert e2e.run_cli(["tokenizer", "train", "cifar10_tokenizer", *overrides]) == 0
    notes = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("note:")]
    assert any("data.val_path" in n and "no evaluation" in n for n in notes), notes
    assert (run / "tokenizer.safetensors").is_file()
    assert not (run / "tokenizer_eval.json").exists()
    assert load_config(run).data.val_path == ""  # config.yaml says what was done


def test_every_bad_path_is_named_in_the_one_line(tmp_path, e2e, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code = e2e.run_cli(
        [
            "finetune",
            "cifar10_finetune",
            f"data.path={empty}",
            f"data.val_path={tmp_path / 'nope'}",
            f"init.checkpoint={tmp_path / 'no_run'}",
            f"run.dir={tmp_path / 'ft'}",
        ]
    )
    assert code == 2
    line = e2e.error_line(capsys.readouterr().err)
    assert "data.path: no images found" in line
    assert "data.val_path:" in line and "nope" in line
    assert "init.checkpoint:" in line and "no_run" in line
    assert not (tmp_path / "ft").exists()


def test_empty_val_path_means_no_evaluation_with_a_note(image_folder, tmp_path, e2e, capsys):
    run = tmp_path / "tok"
    overrides = e2e.tiny_tokenizer_overrides(run, image_folder, steps=1)  # data.val_path=
    assert e2e.run_cli(["tokenizer", "train", "cifar10_tokenizer", *overrides]) == 0
    out = capsys.readouterr().out
    assert "note: data.val_path is empty" in out
    assert (run / "tokenizer.safetensors").is_file()


def test_empty_val_path_is_an_error_where_evaluation_is_required(
    image_folder, tmp_path, e2e, capsys
):
    code = e2e.run_cli(
        [
            "knn",
            "cifar10_finetune",
            f"data.path={image_folder}",
            "data.val_path=",
            "init.checkpoint=",
        ]
    )
    assert code == 2
    assert "data.val_path: empty" in e2e.error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "name",
    [
        "cifar10_vit",
        "cifar10_vit.yaml",
        "configs/cifar10_vit.yaml",
        "/old/repo/configs/cifar10_vit.yaml",
    ],
)
def test_shipped_configs_load_by_name_from_anywhere(name, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # outside the repository
    cfg = load_config(name, ["train.epochs=3"])
    assert cfg.enhancer.kwargs == {"embed_dim": 192, "depth": 6, "num_heads": 3}
    assert cfg.train.epochs == 3


def test_an_unknown_config_name_lists_the_shipped_ones(tmp_path, monkeypatch, e2e, capsys):
    monkeypatch.chdir(tmp_path)
    assert e2e.run_cli(["pretrain", "cifar10_vitt"]) == 2
    line = e2e.error_line(capsys.readouterr().err)
    assert "config file not found: cifar10_vitt" in line and "cifar10_vit," in line


def test_config_show_prints_the_merged_config_and_runs_nothing(tmp_path, monkeypatch, e2e, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["config", "show", "cifar10_resnet", "train.epochs=7", "data.path=/x"]
    assert e2e.run_cli(args) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["enhancer"]["name"] == "resnet10t"  # from the file
    assert shown["enhancer"]["neck_dim"] == 128
    assert shown["train"]["epochs"] == 7 and shown["data"]["path"] == "/x"  # overrides
    assert shown["generator"]["temperature"] == 1.0  # defaults
    assert list(tmp_path.iterdir()) == []
    assert e2e.run_cli(["config", "show", "cifar10_vit", "train.nope=1"]) == 2
    assert "train.nope" in e2e.error_line(capsys.readouterr().err)


def test_overrides_may_follow_options(pretrained_runs, image_folder, tmp_path, e2e) -> None:
    out = tmp_path / "fig.png"
    argv = ["visualize", str(pretrained_runs("respix")), "--n", "1", "--out", str(out)]
    assert e2e.run_cli([*argv, f"data.path={image_folder}", "seed=3"]) == 0
    assert out.is_file()


def test_a_stray_word_is_still_a_usage_error(e2e, capsys) -> None:
    assert e2e.run_cli(["export", "a", "b", "c"]) == 2
    assert "unrecognized arguments: c" in e2e.error_line(capsys.readouterr().err)


def test_configs_are_package_data() -> None:
    import cimpt

    shipped = Path(cimpt.__file__).parent / "configs"
    assert (shipped / "defaults.yaml").is_file()
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"configs/*.yaml"' in text


@pytest.mark.parametrize(
    ("kwargs", "expect"),
    [
        ("{in_chans: 1}", "converted to 3-channel RGB"),
        ("{pretrained: true}", "enhancer.pretrained"),
        ("{img_size: 64}", "data.img_size"),
    ],
)
def test_kwargs_cimpt_sets_itself_are_one_line(kwargs, expect, tmp_path, e2e, capsys) -> None:
    run = tmp_path / "run"
    argv = ["pretrain", "cifar10_vit", f"enhancer.kwargs={kwargs}", f"run.dir={run}"]
    assert e2e.run_cli(argv) == 2
    line = e2e.error_line(capsys.readouterr().err)
    assert "enhancer.kwargs" in line and expect in line
    assert not run.exists()


def test_grayscale_images_are_read_as_rgb(tmp_path) -> None:
    """What the README promises for one-channel data: 3 equal channels, in_chans stays 3."""
    from PIL import Image

    from cimpt.data import ImageFolderDataset

    (tmp_path / "a").mkdir()
    Image.new("L", (8, 8), 77).save(tmp_path / "a" / "g.png")
    img, label = ImageFolderDataset(tmp_path)[0]
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (77, 77, 77) and label == 0


def test_tiff_files_are_images(tmp_path) -> None:
    """8-bit and 16-bit TIFF (scans, microscopy) are found and read, not silently ignored."""
    import numpy as np
    from PIL import Image

    from cimpt.data import ImageFolderDataset

    (tmp_path / "a").mkdir()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "a" / "rgb.tif")
    Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(tmp_path / "a" / "deep.TIFF")
    ds = ImageFolderDataset(tmp_path)
    assert [f.name for f in ds.files] == ["deep.TIFF", "rgb.tif"]
    assert ds[0][0].getpixel((0, 0)) == (255, 255, 255)  # 16-bit white stays white
    assert ds[1][0].getpixel((0, 0)) == (10, 20, 30)


def test_resume_auto_without_a_checkpoint_says_it_starts_fresh(
    cim_overrides, tmp_path, e2e, capsys
):
    run = tmp_path / "run"
    argv = ["pretrain", "cifar10_vit", *cim_overrides(run, steps=1), "resume=auto"]
    assert e2e.run_cli(argv) == 0
    assert f"note: resume=auto: no checkpoint in {run}; starting fresh" in capsys.readouterr().out


def test_tensorboard_tags_are_grouped_and_jsonl_keys_unchanged(cim_overrides, tmp_path, e2e):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    argv = ["pretrain", "cifar10_vit", *cim_overrides(run, steps=1), "run.tensorboard=true"]
    assert e2e.run_cli(argv) == 0
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("pretrain/loss", "gen/gen_loss", "gen/gen_acc", "enh/enh_loss", "optim/lr"):
        assert tag in tags, sorted(tags)
    assert "system/img_per_s" in tags and "loss" not in tags
    # The run's figure is in the Images tab too, as drawn (same size as the PNG).
    assert events.Tags()["images"] == ["figures/cim"]
    (image,) = events.Images("figures/cim")
    png = Image.open(next((run / "figures").glob("cim_*.png")))
    assert (image.step, image.width, image.height) == (1, png.width, png.height)
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"loss", "gen_loss", "enh_loss", "lr", "img_per_s"} <= set(record)


def test_the_readme_python_example_runs(cim_overrides, tmp_path) -> None:
    """README "From Python", with the tiny run's overrides: the names it uses exist."""
    from cimpt.export import load_exported_backbone
    from cimpt.pretrain import pretrain

    cfg = load_config("cifar10_vit", cim_overrides(tmp_path / "run", steps=1))
    result = pretrain(cfg)
    assert result.run_dir == tmp_path / "run" and result.state.step == 1
    assert result.last_metrics["loss"] > 0
    encoder = load_exported_backbone(result.run_dir / "enhancer.safetensors")
    assert encoder.num_features == 32


def test_an_own_config_builds_on_a_shipped_one(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yaml").write_text("base: cifar10_vit.yaml\ntrain:\n  epochs: 9\n")
    cfg = load_config("mine.yaml")
    assert cfg.train.epochs == 9 and cfg.enhancer.kwargs["embed_dim"] == 192


def test_plot_draws_the_curves_of_a_run(pretrained_runs, tmp_path, e2e, capsys) -> None:
    run = pretrained_runs("revdet")
    out = tmp_path / "curves.png"
    assert e2e.run_cli(["plot", str(run), "--out", str(out)]) == 0
    img = Image.open(out)
    assert img.width > 3 * img.height  # one panel per key present, side by side
    capsys.readouterr()
    assert e2e.run_cli(["plot", str(tmp_path)]) == 2
    assert "no metrics.jsonl" in e2e.error_line(capsys.readouterr().err)
    assert e2e.run_cli(["plot", str(run), "--keys", "no_such_key"]) == 2
    assert "no_such_key" in e2e.error_line(capsys.readouterr().err)


def test_start_up_summary_and_recipe_warnings(cim_overrides, tmp_path, e2e, capsys) -> None:
    capsys.readouterr()
    # 24 images in batches of 8: 3 steps per epoch; a one-epoch warm-up over a 2-step run.
    extra = ["run.progress=true", "train.batch_size=8", "train.warmup_epochs=1.0"]
    args = [*cim_overrides(tmp_path / "run", steps=2), *extra]
    assert e2e.run_cli(["pretrain", "cifar10_vit", *args]) == 0
    err = capsys.readouterr().err
    summary = next(ln for ln in err.splitlines() if ln.startswith("pretrain: "))
    assert "24 images" in summary and "batch 8" in summary and "2 steps = 0.67 epochs" in summary
    assert "objective respix" in summary  # the label says pretrain, the objective follows
    assert "8x8 grid of 4 px cells at 32 px, tokenizer view 32 px" in summary
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert any("warm-up (2 steps) covers the whole run (2 steps)" in w for w in warnings)
    assert any("3 steps per epoch" in w for w in warnings)


def test_overrides_may_come_before_the_config(e2e, capsys) -> None:
    """``cimpt config show seed=3 cifar10_vit train.epochs=7``: the config is the first word
    that is not key=value, and the overrides keep their order (issue 16 walk-through)."""
    import yaml

    argv = ["config", "show", "seed=3", "train.epochs=5", "cifar10_vit", "train.epochs=7"]
    assert e2e.run_cli(argv) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["seed"] == 3 and shown["train"]["epochs"] == 7
    assert shown["enhancer"]["patch_size"] == 4  # cifar10_vit was read
    assert e2e.run_cli(["config", "show", "seed=3"]) == 2
    assert "config: missing" in e2e.error_line(capsys.readouterr().err)
