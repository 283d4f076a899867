"""End-to-end tests of ``cimpt finetune`` through ``cimpt.cli.main`` on tiny labelled images.

What a user relies on: the backbone really starts from the pre-trained weights (all of them,
only the head new), every init kind works (run dir, exported file), top-1/top-5 are logged at
each evaluation with best and last in ``results.json``, ``resume=auto`` continues and keeps the
best, and each bad input is one ``error:`` line with nothing written.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from cimpt.config import CONFIG_DIR, load_config
from cimpt.engine.checkpoint import latest_checkpoint

CONFIG = CONFIG_DIR / "cifar10_finetune.yaml"
pytestmark = pytest.mark.usefixtures("one_thread")


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _backbone(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def test_finetune_starts_from_every_pretrained_weight(
    pretrained_runs, ft_overrides, tmp_path: Path, e2e: SimpleNamespace
) -> None:
    pre = pretrained_runs("revdet")
    run = tmp_path / "ft"
    # lr 0 and no drop path: after the steps the backbone still equals its initialization.
    code = e2e.run_cli(
        [
            "finetune",
            str(CONFIG),
            *ft_overrides(
                run,
                steps=2,
                extra=(
                    f"init.checkpoint={pre}",
                    "train.lr=1e-30",
                    "train.min_lr=0",
                    "enhancer.drop_path=0",
                ),
            ),
        ]
    )
    assert code == 0
    source = _backbone(
        load_file(str(latest_checkpoint(pre) / "model.safetensors")), "enhancer.backbone."
    )
    tuned = _backbone(
        load_file(str(latest_checkpoint(run) / "model.safetensors")), "model.backbone."
    )
    assert set(tuned) - set(source) == {"head.weight", "head.bias"}  # only the head is new
    assert tuned["head.weight"].shape == (2, 32)  # two classes, width 32
    for k, v in source.items():
        torch.testing.assert_close(tuned[k], v, rtol=0, atol=1e-6, msg=k)


def test_finetune_logs_each_epoch_and_writes_best_and_last(
    pretrained_runs, ft_overrides, tmp_path: Path, e2e: SimpleNamespace
) -> None:
    exported = pretrained_runs("respix") / "enhancer.safetensors"
    run = tmp_path / "ft"
    # 24 images, batch 4: 6 steps per epoch; 12 steps = 2 epochs, one evaluation each.
    code = e2e.run_cli(
        [
            "finetune",
            str(CONFIG),
            *ft_overrides(
                run, steps=12, extra=(f"init.checkpoint={exported}", "finetune.ema=true")
            ),
        ]
    )
    assert code == 0
    evals = [m for m in _metrics(run) if "val_top1" in m]
    assert [m["step"] for m in evals] == [6, 12]
    for m in evals:
        assert 0 <= m["val_top1"] <= m["val_top5"] == 100.0  # 2 classes: top-5 is everything
        assert "ema_top1" in m and m["best_top1"] == max(
            e["val_top1"] for e in evals if e["step"] <= m["step"]
        )
    res = json.loads((run / "results.json").read_text())
    assert res["last"]["top1"] == evals[-1]["val_top1"] and res["last"]["step"] == 12
    assert res["best"]["top1"] == max(m["val_top1"] for m in evals)
    assert res["init_kind"] == "export" and res["classes"] == ["cats", "dogs"]
    assert (run / "best.safetensors").is_file()
    # top-1 in percent of the 12 held-out images: a multiple of 100/12.
    assert (evals[-1]["val_top1"] * 12 / 100) == pytest.approx(round(evals[-1]["val_top1"] * 0.12))


def test_label_fraction_is_class_balanced_and_resume_keeps_the_best(
    ft_overrides, tmp_path: Path, e2e: SimpleNamespace
) -> None:
    run = tmp_path / "scratch"
    args = ["finetune", str(CONFIG)]
    # 50 % of 12 per class = 6 per class = 12 images: 3 steps per epoch at batch 4.
    extra = ("data.label_fraction=0.5",)
    assert e2e.run_cli([*args, *ft_overrides(run, steps=3, extra=extra)]) == 0
    first = json.loads((run / "results.json").read_text())
    assert first["train_images"] == 12 and first["init"] == "scratch"
    assert e2e.run_cli([*args, *ft_overrides(run, steps=6, extra=(*extra, "resume=auto"))]) == 0
    res = json.loads((run / "results.json").read_text())
    evals = [m for m in _metrics(run) if "val_top1" in m]
    assert [m["step"] for m in evals] == [3, 6]
    assert res["best"]["top1"] == max(m["val_top1"] for m in evals)  # remembered across resume


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("fraction", "leaves class"),
        ("unlabelled", "has no labels"),
        ("missing", "does not exist"),
        ("tokenizer", "'tokenizer' checkpoint, not a CIM pre-training, fine-tuning"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    case: str,
    expect: str,
    pretrained_runs,
    ft_overrides,
    tokenizer_run: Path,
    tmp_path: Path,
    e2e: SimpleNamespace,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "run"
    extra = {
        "fraction": ("data.label_fraction=0.01",),
        "unlabelled": (f"data.path={_unlabelled(tmp_path, e2e)}",),
        "missing": (f"init.checkpoint={tmp_path / 'nope'}",),
        "tokenizer": (f"init.checkpoint={tokenizer_run}",),
    }[case]
    capsys.readouterr()
    assert e2e.run_cli(["finetune", str(CONFIG), *ft_overrides(run, extra=extra)]) == 2
    line = e2e.error_line(capsys.readouterr().err)
    assert expect in line, line
    assert not run.exists()


def _unlabelled(tmp_path: Path, e2e: SimpleNamespace) -> Path:
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(8):
        e2e.structured_image(i).save(flat / f"{i}.png")
    return flat


def test_same_seed_same_weights_other_seed_others(
    ft_overrides, tmp_path: Path, e2e: SimpleNamespace
) -> None:
    # From scratch every weight is a fresh init, so this covers the head's init, the label
    # subset, augmentation and order; the global random stream before a run must not matter.
    def weights(name: str, seed: int) -> dict[str, torch.Tensor]:
        run = tmp_path / name
        extra = ("init.checkpoint=", f"seed={seed}", "data.label_fraction=0.5")
        assert e2e.run_cli(["finetune", str(CONFIG), *ft_overrides(run, 2, extra)]) == 0
        return load_file(str(latest_checkpoint(run) / "model.safetensors"))  # type: ignore[operator]

    a = weights("a", 0)
    torch.rand(3)
    b, other = weights("b", 0), weights("c", 1)
    assert a.keys() == b.keys() == other.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], other[k]) for k in a)


def test_finetune_reads_the_architecture_from_its_checkpoint(
    pretrained_runs, ft_overrides, tmp_path: Path, e2e: SimpleNamespace, capsys
) -> None:
    """The config asks for another width, size and patch; the checkpoint's are used, each
    with a note, and config.yaml records what was really fine-tuned."""
    run = tmp_path / "ft"
    pre = pretrained_runs("respix")
    extra = (
        f"init.checkpoint={pre}",
        "enhancer.kwargs={embed_dim: 48, depth: 2, num_heads: 2}",
        "data.img_size=64",
        "enhancer.patch_size=8",
    )
    capsys.readouterr()
    assert e2e.run_cli(["finetune", str(CONFIG), *ft_overrides(run, steps=1, extra=extra)]) == 0
    notes = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("note:")]
    for key in ("enhancer.kwargs=", "data.img_size=32", "enhancer.patch_size=4"):
        assert any(key in n and str(pre) in n for n in notes), (key, notes)
    assert not any("enhancer.name" in n for n in notes)  # unchanged keys are not noted
    # Both sizes are named: the checkpoint's, used, and the config's, replaced.
    assert any("data.img_size=32" in n and "the config said 64" in n for n in notes), notes
    saved = load_config(run)
    assert saved.data.img_size == 32 and saved.enhancer.patch_size == 4
    assert dict(saved.enhancer.kwargs) == {"embed_dim": 32, "depth": 1, "num_heads": 2}
