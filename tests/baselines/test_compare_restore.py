"""``compare_methods --restore``: a study continued on a machine that lost its work directory
gets the published step budgets back, keeps the published evaluations and checks that its
re-created encoders are the published ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


def _published(steps: int, charge: float, s_per_step: float) -> dict:
    pre = {"s_per_step": s_per_step, "tokenizer_charge_s": charge, "steps": steps}
    return {"scratch": {"method": "scratch", "pretrain": {}}, "cim-revdet": {"pretrain": pre}}


def test_restored_calibration_gives_the_published_step_budget(e2e: SimpleNamespace) -> None:
    cm = e2e.import_bench("compare_methods")
    sr = e2e.import_bench("study_restore")
    # The published full study: 15 min, tokenizer 390 steps charged 257.5 s, 3.6228 s/step.
    # By hand: (900 - 257.5) / 3.6228 = 177.35 -> 177 steps.
    published = _published(177, 257.5, 3.622797885)
    calib = sr.restored_calibration(published, {"cim-revdet": "tokenizer"}, tok_steps=390)
    assert calib == pytest.approx({"cim-revdet": 3.622797885, "tokenizer": 257.5 / 390})
    s = cm.Study(Path("d"), Path("v"), Path("w"), cm.PRESETS["full"], 50_000, 2)
    by = {m.name: m for m in cm.METHODS}
    budget = cm.budget_steps(s, calib, by["cim-revdet"], 390)
    assert budget["steps"] == 177 and budget["tokenizer_charge_s"] == pytest.approx(257.5)


def test_recreated_encoder_check_is_exact() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    import study_restore as sr

    old = {"steps": 5, "last": {"loss": 1.25, "gen_loss": 0.5, "lr": 1e-3}}
    assert sr.compare_recreated({"steps": 5, "last": {"loss": 1.25, "gen_loss": 0.5}}, old)["same"]
    off = sr.compare_recreated({"steps": 5, "last": {"loss": 1.25 * (1 + 1e-6)}}, old)
    assert not off["same"] and off["max_rel_diff"] == pytest.approx(1e-6, rel=1e-3)
    assert not sr.compare_recreated({"steps": 4, "last": old["last"]}, old)["same"]
    sha = {"steps": 5, "encoder_sha256": "ab", "last": {"loss": 9.0}}
    assert sr.compare_recreated(sha, {**old, "encoder_sha256": "ab"}) == {
        "same": True,
        "by": "sha256",
    }
    recs = [{"method": "mae", "pretrain": {"recreated": off}}, {"method": "scratch"}]
    assert "mae (last losses" in sr.recreated_note(recs)[1]


@pytest.mark.timeout(600)
def test_restore_continues_a_study_whose_work_directory_is_gone(
    image_folder: Path, tmp_path: Path, e2e: SimpleNamespace
) -> None:
    cm = e2e.import_bench("compare_methods")
    data = ["--data", str(image_folder), "--val-data", str(image_folder)]
    common = ["--preset", "quick", *data, "--methods", "scratch,mae", "--in-process"]
    first = [*common, "--work", str(tmp_path / "w"), "--out", str(tmp_path / "out")]
    assert cm.main([*first, "--rounds", "ft10_seed0"]) == 0
    table = tmp_path / "out" / "cifar10_methods.json"
    shutil.rmtree(tmp_path / "w")  # the machine was reset; the table survived

    again = [*common, "--work", str(tmp_path / "w2"), "--out", str(tmp_path / "out2")]
    assert cm.main([*again, "--restore", str(table), "--rounds", "ft10_seed0,knn"]) == 0
    old = {r["method"]: r for r in json.loads(table.read_text())["methods"]}
    payload = json.loads((tmp_path / "out2" / "cifar10_methods.json").read_text())
    new = {r["method"]: r for r in payload["methods"]}
    calib = json.loads((tmp_path / "w2" / "calibration.json").read_text())
    assert calib["s_per_step"]["mae"] == old["mae"]["pretrain"]["s_per_step"]
    pre = new["mae"]["pretrain"]
    assert pre["steps"] == old["mae"]["pretrain"]["steps"]
    # Same configs, seeds and steps on the same machine: the very same encoder file.
    assert pre["encoder_sha256"] == old["mae"]["pretrain"]["encoder_sha256"]
    assert pre["recreated"] == {"same": True, "by": "sha256"}
    for name in ("scratch", "mae"):
        assert new[name]["eval"]["ft10_seed0"] == old[name]["eval"]["ft10_seed0"]  # kept
        assert new[name]["eval"]["knn"]["result"] is not None  # run now
    assert not (tmp_path / "w2" / "mae" / "finetune_10pct_seed0").exists()
    assert payload["meta"]["restored_from"]["file"] == str(table)
    assert cm.main([*again, "--preset", "full", "--restore", str(table)]) == 2  # other preset


def test_restore_from_a_file_that_is_not_a_table_is_one_error_line(
    tmp_path: Path, e2e: SimpleNamespace, capsys: pytest.CaptureFixture[str]
) -> None:
    cm = e2e.import_bench("compare_methods")
    (tmp_path / "bad.json").write_text('{"rows": []}')
    for bad in (tmp_path / "missing.json", tmp_path / "bad.json"):
        assert cm.main(["--work", str(tmp_path / "w"), "--restore", str(bad)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: --restore:") and bad.name in err[0]


def test_published_evaluations_are_kept_for_scratch_and_same_encoders(
    e2e: SimpleNamespace,
) -> None:
    sr = e2e.import_bench("study_restore")
    done = {"ft10_seed0": {"result": {"last": {"top1": 30.0}}}, "knn": {"result": None}}

    def arm(name: str, sha: str | None) -> dict:
        pre = {"steps": 3, "encoder_sha256": sha} if sha else {}
        return {"method": name, "pretrain": pre, "eval": {}}

    published = {
        n: {**arm(n, "a" if n != "scratch" else None), "eval": done}
        for n in ("scratch", "mae", "beit")
    }
    same = [arm("scratch", None), arm("mae", "a"), arm("beit", "a")]
    assert sr.adopt_published(same, published)
    assert all(set(r["eval"]) == {"ft10_seed0"} for r in same)  # unfinished knn not kept
    mixed = [arm("scratch", None), arm("mae", "a"), arm("beit", "b")]
    assert not sr.adopt_published(mixed, published)
    assert set(mixed[0]["eval"]) == set(mixed[1]["eval"]) == {"ft10_seed0"}
    assert mixed[2]["eval"] == {} and mixed[2]["published_eval"] == {
        "ft10_seed0": done["ft10_seed0"]
    }
