"""End-to-end tests of ``cimpt pretrain`` through ``cimpt.cli.main`` on tiny data.

What a user relies on after a run: the merged ``config.yaml``, ``metrics.jsonl`` with the
documented keys, a checkpoint holding generator, enhancer and head but never the frozen
tokenizer (docs/METHOD.md: the tokenizer is frozen and not part of CIM's weights), a figure, the
exported enhancer, exact ``resume=auto``, and one clear ``error:`` line for each bad input.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from cimpt.config import load_config, to_dict

COMMON_KEYS = (
    "loss",
    "gen_loss",
    "enh_loss",
    "gen_acc",
    "replaced",
    "lr",
    "grad_norm",
    "img_per_s",
    "data_wait_frac",
    "peak_mem_mb",
)
pytestmark = pytest.mark.usefixtures("one_thread")

OBJECTIVE_KEYS = {
    "respix": ("respix_loss", "respix_vs_zero"),
    "revdet": ("revdet_acc", "revdet_pos", "revdet_prior_acc", "revdet_margin"),
}


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _checkpoint_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*"))


@pytest.mark.parametrize("objective", ["respix", "revdet"])
def test_pretrain_writes_a_complete_run(
    objective: str,
    pretrained_runs,
    cim_overrides,
    tokenizer_file: Path,
    e2e: SimpleNamespace,
) -> None:
    run = pretrained_runs(objective)

    # config.yaml reloads to exactly the config that was asked for.
    asked = load_config(e2e.CIM_CONFIG, cim_overrides(run, objective=objective))
    assert to_dict(load_config(run / "config.yaml")) == to_dict(asked)

    lines = _metrics(run)
    assert [m["step"] for m in lines] == [1, 2]  # log_every=1, two steps
    base_lr = 1.5e-3 * 4 / 256  # blr * batch / 256 (docs/METHOD.md recipe)
    for m in lines:
        for key in (*COMMON_KEYS, *OBJECTIVE_KEYS[objective]):
            assert key in m and math.isfinite(m[key]), key
        # One micro-batch per logged step: the total is L_gen + lambda * L_enh, lambda = 1.
        assert m["loss"] == pytest.approx(m["gen_loss"] + m["enh_loss"], rel=1e-5)
        assert 0.0 <= m["gen_acc"] <= 1.0 and 0.0 <= m["replaced"] <= 1.0
        assert 0.0 < m["lr"] <= base_lr * (1 + 1e-6)
        assert m["img_per_s"] > 0 and 0.0 <= m["data_wait_frac"] <= 1.0
        if objective == "respix":
            assert m["respix_loss"] == pytest.approx(m["enh_loss"], rel=1e-6)
        else:
            # Positives are exactly the replaced positions (label 1[z_hat != z]).
            assert m["revdet_pos"] == pytest.approx(m["replaced"], abs=1e-6)
            assert 0.0 <= m["revdet_acc"] <= 1.0

    ckpt = run / "checkpoints" / "step_00000002" / "model.safetensors"
    keys = set(load_file(str(ckpt)))
    assert keys and all(k.split(".")[0] in ("generator", "enhancer", "head") for k in keys)
    assert {k.split(".")[0] for k in keys} == {"generator", "enhancer", "head"}
    # No frozen-tokenizer tensor, under any prefix.
    with safe_open(str(tokenizer_file), framework="pt") as f:
        tok_keys = set(f.keys())
    assert not any(k.split(".", 1)[1] in tok_keys for k in keys)
    assert not any("tokenizer" in k or "codebook" in k for k in keys)

    assert sorted((run / "figures").glob("cim_*.png"))
    exported = load_file(str(run / "enhancer.safetensors"))
    backbone = {k[len("enhancer.backbone.") :] for k in keys if k.startswith("enhancer.backbone.")}
    assert set(exported) == backbone


def test_resume_auto_continues_to_the_new_max_steps(cim_overrides, tmp_path, e2e) -> None:
    run = tmp_path / "run"
    first = cim_overrides(run, steps=4, extra=["run.ckpt_every=2", "run.vis_every=1000"])
    assert e2e.run_cli(["pretrain", str(e2e.CIM_CONFIG), *first]) == 0
    assert _checkpoint_steps(run) == [2, 4]

    more = [*first, "train.max_steps=6", "resume=auto"]
    assert e2e.run_cli(["pretrain", str(e2e.CIM_CONFIG), *more]) == 0
    steps = [m["step"] for m in _metrics(run)]
    assert steps == [1, 2, 3, 4, 5, 6]  # appended, continuing after the step-4 checkpoint
    assert _checkpoint_steps(run)[-1] == 6
    meta = json.loads((run / "checkpoints" / "step_00000006" / "meta.json").read_text())
    assert meta["step"] == 6 and meta["config"]["train"]["max_steps"] == 6


def test_a_run_directory_is_a_config_for_resuming(
    cim_overrides, tmp_path, e2e, monkeypatch
) -> None:
    # What the interrupt hint prints: `cimpt pretrain RUN_DIR resume=auto`, no other keys,
    # also from another working directory when the run was started with a relative run.dir.
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    first = cim_overrides(Path("run"), steps=4, extra=["run.ckpt_every=2", "run.vis_every=1000"])
    assert e2e.run_cli(["pretrain", str(e2e.CIM_CONFIG), *first]) == 0
    monkeypatch.chdir(tmp_path / "b")
    run = tmp_path / "a" / "run"
    assert e2e.run_cli(["pretrain", str(run), "train.max_steps=6", "resume=auto"]) == 0
    assert [m["step"] for m in _metrics(run)] == [1, 2, 3, 4, 5, 6]
    assert not (tmp_path / "b" / "run").exists()


def test_resume_with_another_model_names_the_key(cim_overrides, tmp_path, e2e, capsys) -> None:
    run = tmp_path / "run"
    args = cim_overrides(run, steps=1, extra=["run.vis_every=1000"])
    assert e2e.run_cli(["pretrain", str(e2e.CIM_CONFIG), *args]) == 0
    capsys.readouterr()
    deeper = [
        *args,
        "enhancer.kwargs={embed_dim: 32, depth: 2, num_heads: 2}",
        "train.max_steps=2",
        "resume=auto",
    ]
    assert e2e.run_cli(["pretrain", str(e2e.CIM_CONFIG), *deeper]) == 2
    line = e2e.error_line(capsys.readouterr().err)
    assert "enhancer.kwargs.depth" in line
    assert _checkpoint_steps(run) == [1]  # nothing new was trained or saved


def test_vis_every_zero_draws_no_figure(cim_overrides, tmp_path, e2e) -> None:
    """``run.vis_every=0`` means no figures at all (configs/defaults.yaml), not a crash."""
    run = tmp_path / "run"
    args = cim_overrides(run, steps=1, extra=["run.vis_every=0"])
    assert e2e.run_cli(["pretrain", str(e2e.CIM_CONFIG), *args]) == 0
    assert not list(run.glob("figures/*.png"))


def _fails(e2e: SimpleNamespace, capsys, overrides: list[str]) -> str:
    capsys.readouterr()
    assert e2e.run_cli(["pretrain", str(e2e.CIM_CONFIG), *overrides]) == 2
    return e2e.error_line(capsys.readouterr().err)


def test_fewer_images_than_a_batch(tmp_path, tokenizer_file, e2e, capsys) -> None:
    few = e2e.write_image_folder(tmp_path / "few", n_per_class=1)  # 2 images, batch 4
    args = e2e.tiny_cim_overrides(tmp_path / "run", few, tokenizer_file)
    line = _fails(e2e, capsys, args)
    assert "2 images" in line and "train.batch_size=4" in line
    assert not (tmp_path / "run").exists()  # found before anything was written


def test_empty_tokenizer_checkpoint_says_how_to_get_one(cim_overrides, tmp_path, e2e, capsys):
    line = _fails(e2e, capsys, [*cim_overrides(tmp_path / "run"), "tokenizer.checkpoint="])
    assert "tokenizer.checkpoint" in line and "cimpt tokenizer train" in line


def test_tokenizer_view_size_that_gives_another_grid(cim_overrides, tmp_path, e2e, capsys):
    # 16 px / downsample 4 = a 4x4 token grid; 32 px / patch 4 = an 8x8 patch grid.
    line = _fails(e2e, capsys, [*cim_overrides(tmp_path / "run"), "tokenizer.img_size=16"])
    assert "tokenizer.img_size" in line and "4x4" in line and "8x8" in line


def test_tokenizer_file_with_another_downsample(cim_overrides, tmp_path, e2e, capsys) -> None:
    # The file's downsample 2 is adopted; a 32 px tokenizer view then gives a 16x16 grid.
    tok2 = e2e.write_tokenizer(tmp_path / "tok2.safetensors", downsample=2)
    args = [
        *cim_overrides(tmp_path / "run"),
        f"tokenizer.checkpoint={tok2}",
        "tokenizer.img_size=32",
    ]
    line = _fails(e2e, capsys, args)
    assert "16x16" in line and "8x8" in line


def test_missing_data_path(cim_overrides, tmp_path, e2e, capsys) -> None:
    missing = tmp_path / "no_such_folder"
    line = _fails(e2e, capsys, [*cim_overrides(tmp_path / "run"), f"data.path={missing}"])
    assert "data.path" in line and str(missing) in line


def test_same_seed_same_run_other_seed_other_run(cim_overrides, tmp_path, e2e) -> None:
    # Initial weights come from the seed too, not from whatever ran before in the process.
    def weights(name: str, seed: int) -> dict[str, torch.Tensor]:
        run = tmp_path / name
        extra = [f"seed={seed}", "run.vis_every=1000"]
        assert e2e.run_cli(["pretrain", str(e2e.CIM_CONFIG), *cim_overrides(run, extra=extra)]) == 0
        return load_file(str(run / "checkpoints" / "step_00000002" / "model.safetensors"))

    a = weights("a", 0)
    torch.rand(3)  # disturb the global random stream between runs: it must not matter
    b, other = weights("b", 0), weights("c", 1)
    assert a.keys() == b.keys() == other.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], other[k]) for k in a)


def test_a_tokenizer_fed_views_of_another_size_is_named(
    cim_overrides, tokenizer_run, tmp_path, e2e, capsys
) -> None:
    from cimpt.tokenizers.load import save_tokenizer, trained_at
    from cimpt.tokenizers.vqvae import VQVAE

    assert trained_at(tokenizer_run) == 32  # tokenizer training records its view size
    tok32 = save_tokenizer(VQVAE(**e2e.TOKENIZER_ARCH), tmp_path / "t32.safetensors", 32)

    def warnings(run: str, *extra: str) -> list[str]:
        capsys.readouterr()
        args = [*cim_overrides(tmp_path / run, steps=1), f"tokenizer.checkpoint={tok32}", *extra]
        assert e2e.run_cli(["pretrain", str(e2e.CIM_CONFIG), *args]) == 0
        return [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")]

    assert warnings("same") == []
    # 64 px images in patches of 4: a 16x16 grid, so the tokenizer sees 64 px views.
    (line,) = warnings("bigger", "data.img_size=64")
    assert "32 px" in line and "64 px" in line
    # A config's other downsample is replaced by the file's (a note), so the views stay 32 px.
    assert warnings("downsample", "tokenizer.downsample=8") == []


def test_tokenizer_verdict_and_a_weak_tokenizer_warns(cim_overrides, tmp_path, e2e, capsys):
    from cimpt.tokenizers.evaluate import verdict

    assert verdict(24.0, 0.5) == "good"
    assert verdict(20.0, 0.3).startswith("usable: PSNR 20.0 dB < 22")
    assert verdict(12.6, 0.02).startswith("weak: PSNR 12.6 dB < 22; 2 % of the codes used")
    assert verdict(24.0, 0.5, 0.8) == "good" and verdict(24.0, 0.5, float("nan")) == "good"
    assert verdict(24.0, 0.5, 0.6).startswith("usable: 60 % of the colour kept < 75 %")
    assert verdict(24.0, 0.5, 0.39).startswith("weak: 39 % of the colour kept")
    folder = tmp_path / "tok"
    tok = e2e.write_tokenizer(folder / "tokenizer.safetensors")
    (folder / "tokenizer_eval.json").write_text(json.dumps({"verdict": verdict(12.6, 0.02)}))
    capsys.readouterr()
    args = [*cim_overrides(tmp_path / "run", steps=1), f"tokenizer.checkpoint={tok}"]
    assert e2e.run_cli(["pretrain", str(e2e.CIM_CONFIG), *args]) == 0
    err = capsys.readouterr().err
    assert "warning: the tokenizer is weak: PSNR 12.6 dB" in err
