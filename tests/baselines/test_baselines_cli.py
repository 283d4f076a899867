"""``cimpt pretrain objective=mae|simmim|beit`` end to end on tiny data: the same run
directory, checkpoints, exact resume, export and evaluation as CIM, and one ``error:`` line
for each bad input, before any work."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from cimpt.engine.checkpoint import load_tensors, resolve_checkpoint
from cimpt.eval.source import load_backbone_source

pytestmark = pytest.mark.usefixtures("one_thread")

LOSS_KEY = {"mae": "mae_loss", "simmim": "simmim_loss", "beit": "beit_loss"}


def _pretrain(e2e: SimpleNamespace, overrides: list[str]) -> int:
    return e2e.run_cli(["pretrain", str(e2e.CIM_CONFIG), *overrides])


@pytest.mark.parametrize("objective", ["mae", "simmim", "beit"])
def test_baseline_run_is_a_complete_pretraining_run(
    objective: str, cim_overrides, tmp_path: Path, e2e: SimpleNamespace
) -> None:
    run = tmp_path / "run"
    args = cim_overrides(run, objective=objective)
    if objective != "beit":  # no tokenizer is read, so a stale path in the config is fine
        args.append(f"tokenizer.checkpoint={tmp_path / 'no_such_tokenizer'}")
    assert _pretrain(e2e, args) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(LOSS_KEY[objective] in r and r["loss"] > 0 for r in rows)
    assert list((run / "figures").glob("*.png"))
    ckpt = resolve_checkpoint(run)
    names = set(load_tensors(ckpt))
    assert any(n.startswith("enhancer.backbone.") for n in names)
    assert not any("tokenizer" in n for n in names)  # frozen tokenizer never saved
    # The exported enhancer is what every evaluation loads from the run.
    exported = load_file(str(run / "enhancer.safetensors"))
    source = load_backbone_source(run)
    assert source.kind == "cim"
    assert set(source.state) == set(exported)
    assert all(torch.equal(source.state[k], exported[k]) for k in exported)
    assert e2e.run_cli(["export", str(run), str(tmp_path / "out.safetensors")]) == 0


def test_mae_resumes_exactly(cim_overrides, tmp_path: Path, e2e: SimpleNamespace) -> None:
    straight, parts = tmp_path / "straight", tmp_path / "parts"
    extra = ["run.vis_every=1000", "run.ckpt_every=2"]
    assert _pretrain(e2e, cim_overrides(straight, objective="mae", steps=4, extra=extra)) == 0
    assert _pretrain(e2e, cim_overrides(parts, objective="mae", steps=2, extra=extra)) == 0
    more = [*cim_overrides(parts, objective="mae", steps=4, extra=extra), "resume=auto"]
    assert _pretrain(e2e, more) == 0
    a = load_tensors(resolve_checkpoint(straight))
    b = load_tensors(resolve_checkpoint(parts))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (
            ["objective=mae", "enhancer.name=resnet18", "enhancer.kwargs={}",
             "enhancer.patch_size=8", "data.img_size=32", "enhancer.neck_dim=8"],
            ("mae needs a ViT", "resnet18"),
        ),
        (["objective=beit", "tokenizer.checkpoint="], ("tokenizer.checkpoint",)),
        (["objective=mae", "mae.mask_ratio=1.0"], ("mae.mask_ratio", "(0, 1)")),
        (["objective=simmim", "simmim.mask_ratio=0"], ("simmim.mask_ratio", "(0, 1)")),
        (["objective=simmim", "simmim.mask_patch_size=6"], ("simmim.mask_patch_size", "4")),
        (["objective=moco"], ("objective", "mae")),
    ],
)  # fmt: skip
def test_bad_baseline_input_is_one_error_line_before_any_work(
    extra: list[str], words: tuple[str, ...], cim_overrides, tmp_path, e2e, capsys
) -> None:
    run = tmp_path / "run"
    capsys.readouterr()
    assert _pretrain(e2e, [*cim_overrides(run), *extra]) == 2
    line = e2e.error_line(capsys.readouterr().err)
    assert all(w in line for w in words), line
    assert not (run / "checkpoints").exists()


def test_compare_methods_budget_charges_the_tokenizer_and_pairs_seeds(e2e) -> None:
    cm = e2e.import_bench("compare_methods")
    s = cm.Study(Path("d"), Path("v"), Path("w"), cm.PRESETS["full"], 50_000, 2)
    calib = {"tokenizer": 0.5, "mae": 0.4, "cim-revdet": 1.5}
    methods = {m.name: m for m in cm.METHODS}
    mae = cm.budget_steps(s, calib, methods["mae"], tok_steps=200)
    cim = cm.budget_steps(s, calib, methods["cim-revdet"], tok_steps=200)
    budget = cm.PRESETS["full"].budget_s
    assert mae["tokenizer_charge_s"] == 0 and mae["steps"] == int(budget / 0.4)
    assert cim["tokenizer_charge_s"] == 100 and cim["steps"] == int((budget - 100) / 1.5)
    assert cim["images_seen"] == cim["steps"] * 128
    mean, sd, n = cm.paired({0: 50.0, 1: 52.0, 2: 49.0}, {0: 45.0, 1: 45.0, 3: 40.0})
    assert (mean, n) == (6.0, 2) and sd == pytest.approx(1.41421356)


def test_compare_methods_every_evaluation_decays_its_lr(e2e) -> None:
    """Each training evaluation of the full preset (linear probe, fine-tuning at 10 % and 100 %)
    warms up for under a third of its steps, so its lr peaks and then decays; the configs'
    1-epoch warm-up alone would span the 1-epoch probe and the half-epoch 100 % run whole."""
    cm = e2e.import_bench("compare_methods")
    s = cm.Study(Path("d"), Path("v"), Path("w"), cm.PRESETS["full"], 50_000, 2)
    jobs = cm.eval_jobs(s, cm.METHODS[0], "")
    trained = [j for key, j in jobs.items() if key != "knn"]
    assert {j.name.split("_", 1)[1] for j in trained} >= {"linprobe", "finetune_100pct_seed0"}
    for job in trained:
        value = dict(a.split("=", 1) for a in job.argv[2:])
        n = 5_000 if "10pct" in job.name else 50_000
        warmup_steps = float(value["train.warmup_epochs"]) * (n // 128)
        assert 0 < warmup_steps < int(value["train.max_steps"]) / 3, job.name


def _quick_study(image_folder: Path, tmp_path: Path, *more: str) -> list[str]:
    """``compare_methods`` arguments of a quick in-process study on the test images, its work
    in ``tmp_path/w`` and its tables in ``tmp_path/out``."""
    data = ["--data", str(image_folder), "--val-data", str(image_folder)]
    where = ["--work", str(tmp_path / "w"), "--out", str(tmp_path / "out")]
    return ["--preset", "quick", *data, *where, "--in-process", *more]


@pytest.mark.timeout(600)
def test_compare_methods_quick_writes_the_table(
    image_folder: Path, tmp_path: Path, e2e: SimpleNamespace
) -> None:
    cm = e2e.import_bench("compare_methods")
    out = tmp_path / "out"
    args = _quick_study(image_folder, tmp_path, "--methods", "scratch,mae")
    assert cm.main(args) == 0
    payload = json.loads((out / "cifar10_methods.json").read_text())
    recs = {r["method"]: r for r in payload["methods"]}
    assert set(recs) == {"scratch", "mae"}
    pre = recs["mae"]["pretrain"]
    assert pre["steps"] >= 1 and pre["wallclock_s"] > 0 and pre["tokenizer_charge_s"] == 0
    for rec in recs.values():
        assert {"knn", "linprobe", "ft10_seed0", "ft100_seed0"} <= set(rec["eval"])
        assert all(v["result"] is not None for v in rec["eval"].values())
    table = (out / "cifar10_methods.md").read_text()
    assert "| scratch |" in table and "| mae |" in table
    assert payload["meta"]["progress"].startswith("6 of 6 evaluation rounds")


def test_compare_methods_scales_added_arms_by_a_reference_arm(
    tmp_path: Path, e2e: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Arms added to a calibrated study are timed beside a saved arm and scaled by it."""
    cm = e2e.import_bench("compare_methods")
    s = cm.Study(Path("d"), Path("v"), tmp_path, cm.PRESETS["full"], 50_000, 2)
    saved = {"tokenizer": 1.0, "mae": 0.5, "cim-revdet": 2.0}
    (tmp_path / "calibration.json").write_text(json.dumps({"s_per_step": saved}))
    asked = []

    def steps(study, methods, names):
        asked.append(set(names))
        # Each arm once: a second trainer of the reference would take its run folder's lock.
        assert len({m.name for m in methods}) == len(methods)
        return {}

    # Today the machine is twice as slow: cim-revdet takes 4 s where it took 2.
    new = {"cim-revdet": [4.0, 4.2, 3.8], "cim-revdet-uniform": [6.0] * 3,
           "cim-revdet-codes256": [3.6] * 3,
           "tokenizer_cim-revdet-codes256": [3.0] * 3}  # fmt: skip
    monkeypatch.setattr(cm, "_calibration_steps", steps)
    monkeypatch.setattr(cm, "time_round_robin", lambda st, rounds: new)
    by = {m.name: m for m in (*cm.METHODS, *cm.VARIANTS)}
    arms = [by[n] for n in ("scratch", "mae", "cim-revdet", "cim-revdet-uniform")]
    arms.append(by["cim-revdet-codes256"])
    calib = cm.calibrate(s, arms)
    assert asked == [{"cim-revdet-uniform", "cim-revdet-codes256",
                      "tokenizer_cim-revdet-codes256", "cim-revdet"}]  # fmt: skip
    assert calib["cim-revdet-uniform"] == pytest.approx(3.0)  # 6 x 2/4
    assert calib["tokenizer_cim-revdet-codes256"] == pytest.approx(1.5)
    assert calib["cim-revdet-codes256"] == pytest.approx(1.8)
    assert calib["mae"] == 0.5 and calib["cim-revdet"] == 2.0  # saved arms untouched
    rec = json.loads((tmp_path / "calibration.json").read_text())
    assert rec["added"][0]["reference"] == "cim-revdet" and rec["added"][0]["scale"] == 0.5
    # A codebook arm pays for its own tokenizer and passes its codebook to pre-training.
    codes = by["cim-revdet-codes256"]
    budget = cm.budget_steps(s, calib, codes, tok_steps=100)
    assert budget["tokenizer_charge_s"] == 150
    argv = cm.pretrain_argv(s, codes, tmp_path / "run", 5)
    assert f"tokenizer.checkpoint={tmp_path / 'tokenizer_cim-revdet-codes256'}" in argv
    assert argv[-1] == "tokenizer.vocab_size=256"
    assert cm.tokenizer_job(s, codes).argv[-1] == "tokenizer.vocab_size=256"


@pytest.mark.timeout(600)
def test_compare_methods_quick_runs_a_custom_variant(
    image_folder: Path, tmp_path: Path, e2e: SimpleNamespace
) -> None:
    cm = e2e.import_bench("compare_methods")
    out = tmp_path / "out"
    args = _quick_study(
        image_folder, tmp_path,
        "--variant", "small-codes tokenizer.vocab_size=8 mask.placement=uniform",
        "--methods", "scratch,cim-revdet,small-codes", "--rounds", "ft10_seed0",
        "--table", "variants",
    )  # fmt: skip
    assert cm.main(args) == 0
    payload = json.loads((out / "variants.json").read_text())
    recs = {r["method"]: r for r in payload["methods"]}
    assert set(recs["small-codes"]["eval"]) == {"ft10_seed0"}
    tok = tmp_path / "w" / "tokenizer_small-codes" / "tokenizer.safetensors"
    assert tok.exists() and (tmp_path / "w" / "tokenizer" / "tokenizer.safetensors").exists()
    assert recs["small-codes"]["pretrain"]["tokenizer_charge_s"] > 0
    assert (
        "| small-codes | tokenizer.vocab_size=8 mask.placement=uniform |"
        in (out / "variants.md").read_text()
    )
    bad = [*args[:-6], "--methods", "scratch,nope"]
    assert cm.main(bad) == 2


def test_compare_methods_render_adds_the_corruption_table(
    tmp_path: Path, e2e: SimpleNamespace
) -> None:
    """``--render`` rewrites the markdown from a written table alone, with each CIM arm's
    end-of-pre-training generator accuracy and REVDET margin over the position-only baseline."""
    cm = e2e.import_bench("compare_methods")

    def arm(name: str, change: str, acc: float, prior: float, seeds: list[float]) -> dict:
        last = {"gen_acc": 0.05, "replaced_masked": 0.98, "revdet_acc": acc,
                "revdet_prior_acc": prior, "revdet_margin": acc - prior}  # fmt: skip
        ev = {f"ft10_seed{i}": {"result": {"last": {"top1": t}}} for i, t in enumerate(seeds)}
        return {"method": name, "change": change, "overrides": ["k=v"] if change else [],
                "pretrain": {"steps": 3, "last": last}, "eval": ev}  # fmt: skip

    records = [
        {"method": "scratch", "change": "", "pretrain": {}, "eval": {}},
        arm("cim-revdet", "", 0.74, 0.66, [50.0, 51.0, 52.0]),
        arm(
            "cim-revdet-uniform", "masks without a position prior", 0.80, 0.547, [52.0, 52.0, 55.0]
        ),
    ]
    meta = {"preset": "full", "commit": "abcdef0", "date": "d", "budget_s": 900, "progress": "p"}
    (tmp_path / "t.json").write_text(json.dumps({"meta": meta, "methods": records}))
    assert cm.main(["--render", "--out", str(tmp_path), "--table", "t"]) == 0
    table = (tmp_path / "t.md").read_text()
    # Paired by seed: (52-50, 52-51, 55-52) = (2, 1, 3): mean 2, sd 1.
    row = "| cim-revdet-uniform | masks without a position prior | `k=v` | +2.00 ± 1.00 (n=3) |"
    assert row in table
    assert "| cim-revdet-uniform | 5.00 | 98.00 | 80.00 | 54.70 | 25.30 |" in table
    assert "| cim-revdet | 5.00 | 98.00 | 74.00 | 66.00 | 8.00 |" in table
    assert cm.main(["--render", "--out", str(tmp_path), "--table", "missing"]) == 2
