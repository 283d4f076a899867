"""Config: layering, typed errors naming the key, size checks, and the documented defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from cimpt.config import (
    CONFIG_DIR,
    RootConfig,
    load_config,
    save_config,
    token_grid,
    tokenizer_resolution,
)
from cimpt.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_defaults_file_matches_schema() -> None:
    documented = yaml.safe_load((CONFIG_DIR / "defaults.yaml").read_text())
    schema = OmegaConf.to_container(OmegaConf.structured(RootConfig))
    assert documented == schema


@pytest.mark.parametrize("name", sorted(p.name for p in (CONFIG_DIR).glob("*.yaml")))
def test_every_shipped_config_loads(name: str) -> None:
    load_config(CONFIG_DIR / name)


def test_layering_file_then_overrides(tmp_path: Path) -> None:
    f = tmp_path / "exp.yaml"
    f.write_text("train:\n  batch_size: 32\n  epochs: 3\n")
    cfg = load_config(f, ["train.epochs=7", "data.mean=[0.5,0.5,0.5]"])
    assert cfg.train.batch_size == 32 and cfg.train.epochs == 7
    assert list(cfg.data.mean) == [0.5, 0.5, 0.5]
    assert cfg.train.blr == pytest.approx(1.5e-3)  # untouched default


def test_base_file_is_merged_first(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("train:\n  batch_size: 16\n  epochs: 2\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\ntrain:\n  epochs: 5\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.train.batch_size, cfg.train.epochs) == (16, 5)


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.batchsize=3", "train.batchsize"),
        ("nosuch.key=1", "nosuch"),
        ("train.batch_size=abc", "train.batch_size"),
        ("objective=mim", "objective"),
        ("data.img_size=30", "data.img_size"),
        ("tokenizer.img_size=40", "tokenizer.img_size"),
        ("mask.ratio=1.5", "mask.ratio"),
        ("tokenizer.chroma_weight=-1", "tokenizer.chroma_weight"),
        ("train.batch_size=10", "train.batch_size"),  # not divisible by accum_steps=4
    ],
)
def test_bad_values_name_the_key(override: str, fragment: str) -> None:
    extra = ["train.accum_steps=4"] if override == "train.batch_size=10" else []
    with pytest.raises(ConfigError) as info:
        load_config(None, [override, *extra])
    msg = str(info.value)
    assert fragment in msg and "\n" not in msg


def test_unknown_key_in_file(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  lr_scale: 2\n")
    with pytest.raises(ConfigError, match=r"train\.lr_scale.*unknown key"):
        load_config(f)


def test_missing_file_and_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    f = tmp_path / "list.yaml"
    f.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(f)


def test_grid_arithmetic() -> None:
    cfg = load_config(
        None, ["data.img_size=224", "enhancer.patch_size=16", "tokenizer.downsample=8"]
    )
    assert token_grid(cfg) == 14 and tokenizer_resolution(cfg) == 112


def test_saved_config_reloads_identically(tmp_path: Path) -> None:
    cfg = load_config(None, ["train.epochs=3", "enhancer.kwargs={depth: 2}"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert OmegaConf.to_container(again) == OmegaConf.to_container(cfg)


@pytest.mark.parametrize(
    ("override", "suggested"),
    [("train.max_step=3", "train.max_steps"), ("data.imgsize=64", "data.img_size")],
)
def test_a_near_miss_key_names_the_key_meant(override: str, suggested: str) -> None:
    with pytest.raises(ConfigError, match=rf"unknown key \(did you mean '{suggested}'\?\)$"):
        load_config(overrides=[override])


def test_a_far_miss_key_suggests_nothing() -> None:
    with pytest.raises(ConfigError, match=r"'zzz': unknown key$"):
        load_config(overrides=["zzz.yyy=1"])


def test_readme_image_size_table_rows_load_with_their_grid_and_view() -> None:
    """Each row of README 'Other image sizes' is a valid override set giving its grid and view."""
    import re
    import shlex

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    rows = re.findall(r"^\| [^|]+\| [^|]+\| `([^`]*=[^`]*)` \| (\d+) \| (\d+) px \|$", readme, re.M)
    assert len(rows) >= 6
    for keys, grid, view in rows:
        cfg = load_config("cifar10_vit", shlex.split(keys))
        assert (token_grid(cfg), tokenizer_resolution(cfg)) == (int(grid), int(view)), keys


def test_overrides_keep_what_omegaconf_from_dotlist_would_change() -> None:
    # Why apply_overrides is not OmegaConf.from_dotlist + merge: the library reads 'key'
    # (no '=') and '=3' (no key) without complaint, and merges a mapping given for a
    # free-form key where cimpt replaces it.
    assert OmegaConf.to_container(OmegaConf.from_dotlist(["train.epochs"])) == {
        "train": {"epochs": None}
    }
    with pytest.raises(ConfigError, match=r"^override 'train\.epochs' is not of the form"):
        load_config(None, ["train.epochs"])
    with pytest.raises(ConfigError, match=r"^override '=3' has an empty key$"):
        load_config(None, ["=3"])
    steps = ["enhancer.kwargs={embed_dim: 64, depth: 2}", "enhancer.kwargs={depth: 3}"]
    merged = OmegaConf.create({"enhancer": {"kwargs": {}}})
    merged.merge_with_dotlist(steps)
    assert OmegaConf.to_container(merged.enhancer.kwargs) == {"embed_dim": 64, "depth": 3}
    cfg = load_config(None, steps)
    assert OmegaConf.to_container(cfg.enhancer.kwargs) == {"depth": 3}
