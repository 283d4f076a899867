"""What a long run meets at the worst moment: NaN steps, signals to the whole process group,
kills during checkpoint writes, full disks, unwritable run directories, malformed config.

Each case runs the engine's toy task (tests/engine/toy_task.py) at tiny size in seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from cimpt.config import load_config
from cimpt.engine.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint
from cimpt.engine.loop import Trainer
from cimpt.errors import CimptError, ConfigError

HERE = Path(__file__).resolve().parents[1] / "engine"
sys.path.insert(0, str(HERE))
from toy_task import (  # noqa: E402
    ToyData,
    ToyTask,
    run_toy,
    toy_collate,
    toy_config,
    wait_for_checkpoint,
)

SCRIPT = HERE / "toy_task.py"
pytestmark = pytest.mark.usefixtures("one_thread")


def _records(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines()]


class BatchNormToy(nn.Module):
    """A model with running statistics; loss NaN on the given forward calls."""

    def __init__(self, nan_at: tuple[int, ...]) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(4)
        self.head = nn.Linear(4, 1)
        self.nan_at, self.calls = set(nan_at), 0

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        self.calls += 1
        x = batch["x"] * (1e6 if self.calls in self.nan_at else 1.0)  # moves the statistics
        loss = ((self.head(self.bn(x)).squeeze(-1) - batch["label"].float()) ** 2).mean()
        if self.calls in self.nan_at:
            loss = loss * float("nan")
        return {"loss": loss}


def _bn_run(run_dir: Path, steps: int, nan_at: tuple[int, ...]) -> tuple[Trainer, BatchNormToy]:
    torch.manual_seed(0)
    model = BatchNormToy(nan_at)
    cfg = toy_config(str(run_dir), steps, ["run.ckpt_every=1", "run.keep_last=20"])
    trainer = Trainer(ToyTask(model, ToyData(), toy_collate), cfg)
    trainer.fit()
    return trainer, model


def test_a_skipped_step_leaves_every_tensor_as_it_was(tmp_path: Path) -> None:
    _, clean = _bn_run(tmp_path / "clean", 2, ())
    _, skipped = _bn_run(tmp_path / "nan", 3, (3,))
    # Step 3 was skipped: parameters AND BatchNorm running statistics equal the 2-step run's.
    for k, v in clean.state_dict().items():
        assert torch.equal(v, skipped.state_dict()[k]), k
    for ckpt in list_checkpoints(tmp_path / "nan"):
        for name, t in load_file(str(ckpt / "model.safetensors")).items():
            assert torch.isfinite(t.float()).all(), (ckpt.name, name)


def test_nan_streak_keeps_the_last_good_checkpoint_and_the_advice_works(tmp_path: Path) -> None:
    extra = ["run.ckpt_every=1", "run.keep_last=1", "run.max_nan_steps=3"]
    with pytest.raises(CimptError, match="restarts from the step-4 checkpoint") as err:
        run_toy(str(tmp_path), 12, extra, nan_at=(5, 6, 7))
    assert "NaN or inf for 3 steps in a row" in str(err.value)
    # One step before the first NaN: it may already hold diverging weights, and says so.
    assert "may already hold diverging weights" in str(err.value)
    # keep_last=1, yet the step-4 checkpoint survived: nothing was written in the streak.
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000004"]
    # Following the advice (a lower lr; here the NaNs are gone) continues from step 4.
    result, _ = run_toy(str(tmp_path), 12, [*extra, "resume=auto", "train.lr=0.01"])
    assert result.state.step == 12 and result.state.nan_total == 0


def test_nan_advice_without_the_caveat_when_the_checkpoint_is_well_before(tmp_path: Path) -> None:
    extra = ["run.ckpt_every=10", "run.max_nan_steps=3"]
    with pytest.raises(CimptError, match="restarts from the step-10 checkpoint") as err:
        run_toy(str(tmp_path), 30, extra, nan_at=(15, 16, 17))
    assert "diverging" not in str(err.value)


def test_nan_steps_get_one_log_record_each(tmp_path: Path) -> None:
    run_toy(str(tmp_path), 8, ["run.log_every=1"], nan_at=(3, 4))
    steps = [r["step"] for r in _records(tmp_path)]
    assert steps == sorted(set(steps)) == list(range(1, 9))
    assert _records(tmp_path)[-1]["nan_skipped"] == 2


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_the_process_group_checkpoints_and_exits_non_zero(
    tmp_path: Path, sig: signal.Signals
) -> None:
    # As timeout, Slurm's scancel or kill -- -PGID do: every process of the group, the two
    # DataLoader workers included, gets the signal.
    args = [sys.executable, str(SCRIPT), str(tmp_path), "400", "0.02", "data.num_workers=2"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, start_new_session=True)
    wait_for_checkpoint(tmp_path, proc, 4)
    os.killpg(proc.pid, sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, out  # 143 / 130: not "done" for `&&` or a scheduler
    words = out.decode().split()
    assert words[-2] == "interrupted"
    step = int(words[-1])
    assert latest_checkpoint(tmp_path).name == f"step_{step:08d}"  # type: ignore[union-attr]
    done = subprocess.run(
        [*args[:3], str(step + 2), "0", "data.num_workers=2", "resume=auto"],
        capture_output=True,
    )
    assert done.returncode == 0 and done.stdout.split()[-2:] == [b"finished", b"%d" % (step + 2)]


def test_stale_temporaries_of_killed_writers_are_removed_at_start(tmp_path: Path) -> None:
    run_toy(str(tmp_path), 4)
    dead = [
        tmp_path / "checkpoints" / ".tmp-step_00000008-999999",
        tmp_path / "checkpoints" / ".old-step_00000004-999999",
    ]
    for d in dead:
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"x" * 1000)
    leftover = tmp_path / ".metrics.jsonl.abc123.tmp"
    leftover.write_text("{}")
    run_toy(str(tmp_path), 6, ["resume=auto"])
    assert not any(d.exists() for d in dead) and not leftover.exists()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000004", "step_00000006"]


def test_a_full_disk_during_a_checkpoint_is_one_error_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = {"w": torch.zeros(2)}
    first = save_checkpoint(tmp_path, 1, t, {"a": 1}, {"step": 1})

    def full_disk(*args: Any, **kwargs: Any) -> None:
        # What torch.save raises on ENOSPC: a RuntimeError, not an OSError.
        raise RuntimeError("[enforce fail at inline_container.cc:642] . unexpected pos 64")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CimptError, match="could not write checkpoint step 2"):
        save_checkpoint(tmp_path, 2, t, {"a": 2}, {"step": 2})
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [first.name]


def test_a_run_dir_that_cannot_be_written_is_one_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(CimptError, match=r"run\.dir .*cannot write there"):
        run_toy(str(blocker / "run"), 2)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("enhancer.kwargs={embed_dim:64,depth:2}", "enhancer.kwargs"),  # YAML: keys, no values
        ("train.lr=-1", "train.lr"),
        ("generator.temperature=-0.5", "generator.temperature"),
        ("generator.top_k=1025", "generator.top_k"),  # larger than the 1,024-id vocabulary
        ("generator.top_k=-1", "generator.top_k"),
        ("generator.top_p=0", "generator.top_p"),
        ("generator.top_p=1.5", "generator.top_p"),
    ],
)
def test_config_mistakes_that_were_silent(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_a_huge_image_is_skipped_before_it_is_decoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import warnings

    from PIL import Image

    import cimpt.data.images as images

    monkeypatch.setattr(images, "MAX_PIXELS", 64 * 64)
    Image.new("RGB", (65, 64)).save(tmp_path / "big.png")
    Image.new("RGB", (64, 64)).save(tmp_path / "ok.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        big = tmp_path / "big.png"
        assert images.load_rgb_or_none(big, "big.png", images.BrokenFileReporter()) is None
    assert "over the limit" in str(caught[0].message)
    ok = images.load_rgb_or_none(tmp_path / "ok.png", "ok.png", images.BrokenFileReporter())
    assert ok is not None


def test_compiled_model_trains_and_resumes(tmp_path: Path) -> None:
    # train.compile=true (untested before): a compiled run trains, writes checkpoints with the
    # same keys as an eager run, and resumes. (Losses are not compared with the eager run:
    # Inductor draws dropout masks from its own RNG.)
    run_toy(str(tmp_path / "eager"), 4)
    compiled, _ = run_toy(str(tmp_path / "compiled"), 4, ["train.compile=true"])
    assert compiled.state.nan_total == 0
    keys = {
        name: set(load_file(str(latest_checkpoint(tmp_path / name) / "model.safetensors")))  # type: ignore[operator]
        for name in ("eager", "compiled")
    }
    assert keys["compiled"] == keys["eager"]
    again, _ = run_toy(str(tmp_path / "compiled"), 6, ["train.compile=true", "resume=auto"])
    assert again.state.step == 6


def test_tokenizer_files_of_the_wrong_format(tmp_path: Path) -> None:
    import pickle

    from cimpt.tokenizers.dalle import DalleTokenizer
    from cimpt.tokenizers.load import load_tokenizer

    pkl = tmp_path / "encoder.pkl"
    pkl.write_bytes(pickle.dumps({"not": "run"}))
    with pytest.raises(CimptError, match="cimpt tokenizer convert-dalle"):
        load_tokenizer(pkl)
    # A torch.save'd dVAE state dict is accepted when the config says tokenizer.kind=dalle.
    torch.manual_seed(0)
    small = {"encoder_hid": 8, "encoder_blocks": 1, "decoder_init": 8, "decoder_hid": 8}
    dvae = DalleTokenizer(vocab_size=64, **small)
    torch.save(dvae.state_dict(), tmp_path / "dalle.pt")
    with pytest.raises(CimptError, match=r"tokenizer\.kind=dalle"):
        load_tokenizer(tmp_path / "dalle.pt")
    loaded = load_tokenizer(tmp_path / "dalle.pt", kind="dalle")
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(loaded.encode(x), dvae.eval().encode(x))


@pytest.fixture
def small_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A 1 MiB tmpfs, where the OS lets this process mount one (else the test is skipped)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()[:80]}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_a_really_full_disk_is_one_error_and_the_run_continues_after(small_disk: Path) -> None:
    run = small_disk / "run"
    run_toy(str(run), 4)
    filler = small_disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:  # fill every free byte
        with pytest.raises(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    with pytest.raises(CimptError, match="No space left on device"):
        run_toy(str(run), 8, ["resume=auto", "run.ckpt_every=2"])
    assert [p.name for p in list_checkpoints(run)] == ["step_00000004"]
    assert not list((run / "checkpoints").glob(".tmp-*"))
    filler.unlink()  # space again: the same command continues from step 4
    result, _ = run_toy(str(run), 8, ["resume=auto", "run.ckpt_every=2"])
    assert result.state.step == 8


def test_overwrite_replaces_outputs_and_is_not_inherited_by_naming_the_run(tmp_path: Path) -> None:
    run_toy(str(tmp_path), 4)
    (tmp_path / "enhancer.safetensors").write_text("the old run's export")
    run_toy(str(tmp_path), 2, ["run.overwrite=true"])
    assert not (tmp_path / "enhancer.safetensors").exists()
    # The run stored run.overwrite=true; naming the run directory as config does not inherit
    # it (so `cimpt pretrain RUN_DIR` without resume is refused, not a deletion).
    cfg = load_config(tmp_path)
    assert cfg.run.overwrite is False and cfg.run.dir == str(tmp_path)


def test_a_checkpoint_whose_resave_was_killed_between_renames_is_restored(tmp_path: Path) -> None:
    run_toy(str(tmp_path), 4)
    ckpts = tmp_path / "checkpoints"
    (ckpts / "step_00000004").rename(ckpts / ".old-step_00000004-999999")  # the only copy
    result, _ = run_toy(str(tmp_path), 6, ["resume=auto"])
    assert result.state.step == 6
    assert "step_00000004" in [p.name for p in list_checkpoints(tmp_path)]


def test_a_refused_second_lock_keeps_the_first(tmp_path: Path) -> None:
    from cimpt.engine.runlock import RunLock

    first = RunLock(tmp_path).acquire()
    with pytest.raises(CimptError, match="in use"):
        RunLock(tmp_path).acquire()
    probe = (
        "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "try: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "except OSError: sys.exit(3)\n"
    )
    lock_file = first.path
    taken = subprocess.run([sys.executable, "-c", probe, str(lock_file)])
    assert taken.returncode == 3  # another process still cannot take it
    first.release()


def test_temperature_zero_is_accepted_and_is_argmax() -> None:
    # T = 0 is the argmax corruption the paper compares sampling against (its claim 4).
    from cimpt.cim import CIM

    assert load_config(None, ["generator.temperature=0"]).generator.temperature == 0
    logits = torch.randn(2, 4, 4, 16)
    z, mask = torch.zeros(2, 4, 4, dtype=torch.long), torch.rand(2, 4, 4) < 0.5
    stub = type("Stub", (), {"temperature": 0.0, "top_k": 0, "top_p": 1.0})()
    z_hat = CIM.sample.__wrapped__(stub, logits, z, mask)  # type: ignore[attr-defined]
    assert torch.equal(z_hat, torch.where(mask, logits.argmax(-1), z))
