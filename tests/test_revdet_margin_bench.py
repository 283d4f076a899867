"""bench/revdet_margin.py: the windowed readings, and a quick run of both mask placements."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest


def test_window_mean_averages_only_the_logged_steps_inside_the_window(
    e2e: SimpleNamespace,
) -> None:
    rm = e2e.import_bench("revdet_margin")
    keys = ("revdet_acc", "revdet_prior_acc", "revdet_margin")
    # Steps 20..200 every 20; acc = step / 1000, prior = 0.5, margin = acc - prior.
    points = [dict(zip(keys, (s / 1000, 0.5, s / 1000 - 0.5), strict=True)) | {"step": s}
              for s in range(20, 201, 20)]  # fmt: skip
    got = rm.window_mean(points, 177)  # window (97, 177]: lines 100, 120, 140, 160
    assert (got["n_logged"], got["first_step"], got["last_step"]) == (4, 81, 160)
    assert got["revdet_acc"] == pytest.approx((0.10 + 0.12 + 0.14 + 0.16) / 4)
    assert got["revdet_margin"] == pytest.approx(0.13 - 0.5)
    # The window's left edge is open: at 180, the line at 100 is out.
    assert rm.window_mean(points, 180)["revdet_acc"] == pytest.approx(0.15)
    assert rm.window_mean(points, 10) is None
    # A short last line (the 3 steps after 920) weighs 3/20 of each 20-step line before it.
    run = [points[0] | {"step": s, "revdet_acc": 0.6} for s in range(840, 921, 20)]
    run.append(points[0] | {"step": 923, "revdet_acc": 0.9})
    got = rm.window_mean(run, 923)  # window (843, 923]: lines 860-920 and 923
    assert (got["n_logged"], got["first_step"]) == (5, 841)
    assert got["revdet_acc"] == pytest.approx((80 * 0.6 + 3 * 0.9) / 83)


@pytest.mark.timeout(600)
def test_revdet_margin_quick_runs_both_placements(
    image_folder: Path, tmp_path: Path, e2e: SimpleNamespace
) -> None:
    rm = e2e.import_bench("revdet_margin")
    args = [
        "--preset", "quick", "--data", str(image_folder), "--val-data", str(image_folder),
        "--work", str(tmp_path / "w"), "--out", str(tmp_path / "out"), "--in-process",
        "--steps", "3", "--evals", "ft10_seed0,knn",
    ]  # fmt: skip
    assert rm.main(args) == 0
    rows = json.loads((tmp_path / "out" / "revdet_margin.json").read_text())["rows"]
    assert [r["arm"] for r in rows] == ["beit", "uniform"]
    for r in rows:
        # The run logged its last step, and the margin is accuracy minus the prior.
        last = r["curve"][-1]
        assert last["step"] == 3
        assert last["revdet_margin"] == pytest.approx(
            last["revdet_acc"] - last["revdet_prior_acc"], abs=1e-6
        )
        assert r["at_end"]["n_logged"] >= 1
        cfg = (tmp_path / "w" / f"{r['arm']}_3" / "pretrain" / "config.yaml").read_text()
        assert f"placement: {r['arm']}" in cfg
        # Its encoder was fine-tuned next to its pre-training (not from scratch).
        ft = tmp_path / "w" / f"{r['arm']}_3" / "finetune_10pct_seed0" / "config.yaml"
        assert f"{r['arm']}_3/pretrain" in ft.read_text()
        assert set(r["eval"]) == {"ft10_seed0", "knn"}
    record = json.loads((tmp_path / "out" / "revdet_margin.json").read_text())
    scratch = record["scratch"]["ft10_seed0"]
    table = (tmp_path / "out" / "revdet_margin.md").read_text()
    assert "| beit | 3 |" in table and "| uniform | 3 |" in table
    # The downstream table pairs each arm with scratch by seed: gain = arm - scratch.
    gain = rows[1]["eval"]["ft10_seed0"] - scratch
    assert f"| uniform | {rows[1]['eval']['ft10_seed0']:.2f} |" in table
    assert f"{gain:+.2f} ± nan (n=1)" in table


def test_revdet_margin_unknown_arm_is_one_error_line(
    e2e: SimpleNamespace, capsys: pytest.CaptureFixture
) -> None:
    rm = e2e.import_bench("revdet_margin")
    assert rm.main(["--arms", "beit,diagonal"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "diagonal" in err and len(err.splitlines()) == 1


def test_chroma_arm_trains_its_own_tokenizer_with_the_colour_weight(
    e2e: SimpleNamespace, tmp_path: Path
) -> None:
    rm = e2e.import_bench("revdet_margin")
    cm = e2e.import_bench("compare_methods")
    arm = cm._cim_variant("cim-revdet-chroma4", "chroma4", *rm.ARMS["chroma4"])
    beit = cm._cim_variant("cim-revdet-beit", "beit", *rm.ARMS["beit"])
    # Its own tokenizer folder (not the shared one), trained with the weight ...
    assert beit.tokenizer_name == "tokenizer" != arm.tokenizer_name
    s = cm.Study(tmp_path, tmp_path, tmp_path, cm.PRESETS["quick"], 100, 1)
    assert "tokenizer.chroma_weight=4.0" in cm.tokenizer_job(s, arm).argv
    assert not any(a.startswith("tokenizer.chroma") for a in cm.tokenizer_job(s, beit).argv)
    # ... and BEiT's masks, so it differs from the default arm in the tokenizer only.
    pre = cm.pretrain_argv(s, arm, tmp_path / "p", 3)
    assert "mask.placement=beit" in pre
    assert f"tokenizer.checkpoint={tmp_path / arm.tokenizer_name}" in pre
    assert set(rm.DEFAULT_ARMS) == {"beit", "uniform"}


def test_every_arm_is_a_valid_config_and_shares_the_tokenizer_only_when_it_keeps_it(
    e2e: SimpleNamespace, tmp_path: Path
) -> None:
    from cimpt.config import load_config, typed

    rm = e2e.import_bench("revdet_margin")
    cm = e2e.import_bench("compare_methods")
    s = cm.Study(tmp_path, tmp_path, tmp_path, cm.PRESETS["quick"], 100, 1)
    for name, overrides in rm.ARMS.items():
        arm = cm._cim_variant(f"cim-revdet-{name}", name, *overrides)
        cfg = typed(load_config(cm.PRETRAIN_CONFIG, list(overrides)))
        changes_tokenizer = any(o.startswith("tokenizer.") for o in overrides)
        assert (arm.tokenizer_name != "tokenizer") == changes_tokenizer, name
        # Each arm's pre-training gets all its overrides, after the study's own.
        assert cm.pretrain_argv(s, arm, tmp_path / "p", 3)[-len(overrides) :] == list(overrides)
        if name == "temp05":
            assert cfg.generator.temperature == 0.5 and not changes_tokenizer
        if name == "genwide":
            assert (cfg.generator.embed_dim, cfg.generator.num_heads) == (256, 8)
        if name == "gendeep":
            assert (cfg.generator.depth, cfg.generator.embed_dim) == (4, 128)
        if name == "bf16":
            # Its pre-training computes in bf16 (the override follows the study's fp32 pin);
            # the evaluations of its encoder keep the study's fp32.
            assert cfg.train.amp == "bf16" and not changes_tokenizer
            evals = cm.eval_jobs(s, cm.Method("bf16_3", "revdet"), str(tmp_path / "p"))
            assert all(j.argv.count("train.amp=none") == 1 for j in evals.values())
            assert not any("train.amp=bf16" in j.argv for j in evals.values())
        if name == "codes512":
            assert cfg.tokenizer.vocab_size == 512
            assert "tokenizer.vocab_size=512" in cm.tokenizer_job(s, arm).argv


def test_equal_time_scales_steps_by_timed_step_cost_and_reuses_the_timing(
    e2e: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rm = e2e.import_bench("revdet_margin")
    built: list[set[str]] = []

    def fake_steps(s: object, methods: list, names: set[str]) -> dict[str, object]:
        built.append(names)
        return {m.name: None for m in methods}

    # Medians: beit 1.0 s, genwide 1.5 s (a slow outlier must not move the median).
    fake = {"cim-revdet-beit": [1.0, 0.9, 1.1], "cim-revdet-genwide": [1.5, 1.4, 9.0]}
    monkeypatch.setattr(rm.cm, "_calibration_steps", fake_steps)
    monkeypatch.setattr(rm.cm, "time_round_robin", lambda steps, rounds: fake)
    s = SimpleNamespace(work=tmp_path, preset=SimpleNamespace(calib_steps=3), threads=2)
    # 923 steps of beit cost 923 s; genwide's 1.5 s steps buy 615 of them.
    assert rm.equal_time_steps(s, ["beit", "genwide"], 923) == {"beit": 923, "genwide": 615}
    assert built == [{"cim-revdet-beit", "cim-revdet-genwide"}]
    saved = json.loads((tmp_path / "margin_calibration.json").read_text())
    assert saved["beit:genwide"]["s_per_step"] == {"beit": 1.0, "genwide": 1.5}
    # A second call reuses the saved times: nothing is timed again.
    monkeypatch.setattr(rm.cm, "time_round_robin", lambda steps, rounds: pytest.fail("timed"))
    assert rm.equal_time_steps(s, ["beit", "genwide"], 300) == {"beit": 300, "genwide": 200}
