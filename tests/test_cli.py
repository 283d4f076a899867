"""End-to-end tests of the ``cimpt`` command line: usage errors, config errors, tokenizer runs.

The contract (docs/DESIGN.md, "The stable interface"): exit 0 on success; on bad input a non-zero
exit and exactly one stderr line that starts with ``error:`` and names what is wrong, before
anything is written into ``run.dir``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from cimpt.data.images import BrokenImageWarning
from cimpt.tokenizers.load import load_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


def test_help_lists_the_commands(e2e, capsys) -> None:
    assert e2e.run_cli(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("pretrain", "tokenizer", "visualize", "export", "demo"):
        assert command in out
    # The installed module entry point works too, in a fresh interpreter.
    proc = subprocess.run(
        [sys.executable, "-m", "cimpt.cli", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and "pretrain" in proc.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["frobnicate"],
        [],
        ["pretrain"],
        ["tokenizer"],
        ["tokenizer", "frobnicate"],
        ["export", "only_one_argument"],
        ["visualize", "ckpt", "--n", "many"],
    ],
)
def test_usage_mistakes_are_one_error_line(argv: list[str], e2e, capsys) -> None:
    assert e2e.run_cli(argv) == 2
    e2e.error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("train.batchsize=3", "train.batchsize"),  # unknown key
        ("train.batch_size=abc", "train.batch_size"),  # wrong type
        ("run.progress=maybe", "run.progress"),
        ("data.img_size=30", "data.img_size"),  # 30 px is not a whole number of 4 px patches
        ("objective=moco", "objective"),
        ("no_equals_sign", "no_equals_sign"),
    ],
)
def test_bad_config_is_one_line_and_writes_nothing(
    override: str, named: str, cim_overrides, tmp_path, e2e, capsys
) -> None:
    run = tmp_path / "run"
    argv = ["pretrain", str(e2e.CIM_CONFIG), *cim_overrides(run), override]
    assert e2e.run_cli(argv) == 2
    assert named in e2e.error_line(capsys.readouterr().err)
    assert not run.exists()


def test_a_command_destroys_the_process_group_it_ran_in(tmp_path: Path, e2e, capsys) -> None:
    """Under torchrun a training command joins a process group; the CLI destroys it as the
    command ends, on success and on error alike (here a group of one, joined beforehand)."""
    import torch.distributed as dist

    missing = str(tmp_path / "missing.yaml")
    for argv, code in ((["config", "list"], 0), (["config", "show", missing], 2)):
        pg_file = tmp_path / f"pg_{code}"
        dist.init_process_group("gloo", init_method=f"file://{pg_file}", rank=0, world_size=1)
        try:
            assert e2e.run_cli(argv) == code
            assert not dist.is_initialized()
        finally:
            if dist.is_initialized():  # do not leave a group to the other tests
                dist.destroy_process_group()


def test_tokenizer_train_writes_a_loadable_tokenizer(tokenizer_run: Path, image_folder) -> None:
    tok = load_tokenizer(tokenizer_run / "tokenizer.safetensors")
    assert (tok.vocab_size, tok.downsample) == (16, 4)
    # The file holds the trained weights: those of the final engine checkpoint.
    ckpt = load_file(str(tokenizer_run / "checkpoints" / "step_00000002" / "model.safetensors"))
    own = tok.state_dict()
    assert set(own) == {k[len("tokenizer.") :] for k in ckpt}
    for key, value in own.items():
        torch.testing.assert_close(value, ckpt[f"tokenizer.{key}"], rtol=0, atol=0)
    x = torch.rand(2, 3, 32, 32)
    ids = tok.encode(x)
    assert ids.shape == (2, 8, 8) and int(ids.min()) >= 0 and int(ids.max()) < 16
    lines = (tokenizer_run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["step"] for ln in lines] == [1, 2]


def _psnr_by_hand(tok: torch.nn.Module, folder: Path) -> tuple[float, int]:
    """Mean per-image PSNR of encode -> decode over the 32 px PNGs of ``folder``."""
    values = []
    for path in sorted(folder.rglob("*.png")):
        arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
        x = torch.from_numpy(arr).permute(2, 0, 1)[None]
        with torch.no_grad():
            recon = tok.decode(tok.encode(x))
        mse = float(((recon - x) ** 2).mean())
        values.append(10 * math.log10(1 / mse))
    return sum(values) / len(values), len(values)


def test_tokenizer_eval_writes_psnr_perplexity_usage(
    tokenizer_run: Path, image_folder: Path, e2e
) -> None:
    argv = [
        "tokenizer",
        "eval",
        str(tokenizer_run),
        f"data.val_path={image_folder}",
        "data.num_workers=0",
    ]
    assert e2e.run_cli(argv) == 0
    result = json.loads((tokenizer_run / "tokenizer_eval.json").read_text())
    for key in ("psnr", "perplexity", "usage"):
        assert key in result and math.isfinite(result[key])
    assert 1.0 <= result["perplexity"] <= 16 and 0 < result["usage"] <= 1
    assert result["perplexity"] <= result["usage"] * 16 + 1e-4  # at most the codes in use
    psnr, n = _psnr_by_hand(load_tokenizer(tokenizer_run / "tokenizer.safetensors"), image_folder)
    assert result["n_images"] == n == 24
    assert result["psnr"] == pytest.approx(psnr, abs=0.05)


def test_corrupt_image_is_skipped_and_counted(tmp_path, e2e) -> None:
    folder = e2e.write_image_folder(tmp_path / "images", n_per_class=4)  # 8 images
    (folder / "cats" / "000.png").write_bytes(b"not a PNG at all\n")  # now 7 good + 1 broken
    run = tmp_path / "run"
    # Batch 4, two steps: one full epoch, so every file (the broken one too) is read once.
    argv = [
        "tokenizer",
        "train",
        str(e2e.TOKENIZER_CONFIG),
        *e2e.tiny_tokenizer_overrides(run, folder, steps=2),
    ]
    with pytest.warns(BrokenImageWarning, match="000.png"):
        assert e2e.run_cli(argv) == 0
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 2 and last["skipped_images"] == 1
    assert (run / "tokenizer.safetensors").is_file()


def test_a_broken_file_is_counted_once_over_many_epochs(tmp_path, e2e) -> None:
    folder = e2e.write_image_folder(tmp_path / "images", n_per_class=4)  # 8 images
    (folder / "dogs" / "001.png").write_bytes(b"truncated")
    run = tmp_path / "run"
    # Batch 4, 8 steps: four epochs, each reading the broken file again.
    argv = [
        "tokenizer",
        "train",
        str(e2e.TOKENIZER_CONFIG),
        *e2e.tiny_tokenizer_overrides(run, folder, steps=8),
    ]
    with pytest.warns(BrokenImageWarning, match="001.png"):
        assert e2e.run_cli(argv) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["epoch"] >= 3
    assert records[-1]["skipped_images"] == 1  # one file, not one per epoch
