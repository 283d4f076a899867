"""The generic loop: logging, accumulation, NaN guard, kill/resume equivalence, SIGTERM, DDP."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cimpt.engine.checkpoint import latest_checkpoint, list_checkpoints
from cimpt.errors import CimptError

sys.path.insert(0, str(Path(__file__).parent))
from toy_task import (
    ToyData,
    ToyModel,
    ToyTask,
    run_toy,
    toy_collate,
    toy_config,
    wait_for_checkpoint,
)

SCRIPT = Path(__file__).parent / "toy_task.py"


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_fit_logs_and_checkpoints(tmp_path: Path) -> None:
    result, _ = run_toy(str(tmp_path), 6)
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 4, 6]
    for key in ("loss", "mse", "lr", "grad_norm", "img_per_s", "data_wait_frac", "peak_mem_mb"):
        assert key in lines[-1], key
    assert (tmp_path / "config.yaml").is_file()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000004", "step_00000006"]
    assert result.state.step == 6 and not result.interrupted


def test_accumulation_matches_one_big_batch(tmp_path: Path) -> None:
    # Without dropout, 2 micro-batches of 4 give the same update as one batch of 8.
    finals = []
    for accum in (1, 2):
        cfg = toy_config(str(tmp_path / f"a{accum}"), 3, [f"train.accum_steps={accum}"])
        torch.manual_seed(123)
        model = ToyModel()
        model.net[2].p = 0.0
        from cimpt.engine.loop import Trainer

        Trainer(ToyTask(model, ToyData(), toy_collate), cfg).fit()
        finals.append(_weights(model))
    for k in finals[0]:
        torch.testing.assert_close(finals[0][k], finals[1][k], rtol=1e-5, atol=1e-6)


def test_logged_means_are_the_means_of_the_applied_steps(tmp_path: Path) -> None:
    """The loop keeps scalars on the device and reads them back once per log step: the numbers
    logged are still the plain means, over the steps since the last record that were applied
    (a skipped NaN step counts in nan_skipped only), of each step's micro-batch mean."""
    from cimpt.engine.loop import Trainer

    cfg = toy_config(str(tmp_path), 7, ["train.accum_steps=2", "run.log_every=3"])
    torch.manual_seed(123)
    model = ToyModel(nan_at=(5,))  # the 5th micro-batch: the 3rd step is skipped
    losses: list[float] = []
    forward = model.forward

    def recording(batch: dict) -> dict[str, torch.Tensor]:
        out = forward(batch)
        losses.append(float(out["loss"].detach()))  # the test's own reading, one per micro-batch
        return out

    model.forward = recording  # type: ignore[method-assign]
    Trainer(ToyTask(model, ToyData(), toy_collate), cfg).fit()
    steps = [(losses[2 * i] + losses[2 * i + 1]) / 2 for i in range(7)]
    windows = {3: [1, 2], 6: [4, 5, 6], 7: [7]}  # step 3 skipped
    records = _metrics(tmp_path)
    assert [r["step"] for r in records] == list(windows)
    for r in records:
        expected = sum(steps[s - 1] for s in windows[r["step"]]) / len(windows[r["step"]])
        assert r["loss"] == pytest.approx(expected, rel=1e-6)
        assert r["mse"] == pytest.approx(expected, rel=1e-6)
        assert r["nan_skipped"] == 1


def test_nan_step_is_skipped_and_logged(tmp_path: Path) -> None:
    cfg_extra = ["run.ckpt_every=100"]
    _, clean = run_toy(str(tmp_path / "clean"), 2, cfg_extra)
    result, model = run_toy(str(tmp_path / "nan"), 3, cfg_extra, nan_at=(3,))
    # Steps 1-2 equal the clean run; step 3 was skipped, so weights stay at step 2's.
    for k, v in _weights(clean).items():
        assert torch.equal(v, model.state_dict()[k]), k
    assert result.state.nan_total == 1
    lines = [json.loads(s) for s in (tmp_path / "nan" / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("nan_skipped") == 1 for r in lines)


def test_nan_streak_stops_run_without_nan_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CimptError, match="NaN or inf for 3 steps in a row"):
        run_toy(str(tmp_path), 10, ["run.max_nan_steps=3"], nan_at=(5, 6, 7))
    # The step-4 checkpoint exists; nothing was written after the NaNs.
    assert latest_checkpoint(tmp_path).name == "step_00000004"  # type: ignore[union-attr]


def test_dataset_smaller_than_batch(tmp_path: Path) -> None:
    with pytest.raises(CimptError, match="fewer than one batch"):
        run_toy(str(tmp_path), 2, n=5)


def test_resume_with_other_model_config_fails(tmp_path: Path) -> None:
    run_toy(str(tmp_path), 4)
    with pytest.raises(CimptError, match=r"tokenizer\.width: checkpoint 64 vs config 32"):
        run_toy(str(tmp_path), 8, ["resume=auto", "tokenizer.width=32"])


def _python() -> list[str]:
    return [sys.executable, str(SCRIPT)]


@pytest.mark.parametrize(("workers", "amp"), [(0, "none"), (2, "none"), (0, "bf16")])
def test_sigkill_then_resume_equals_uninterrupted(tmp_path: Path, workers: int, amp: str) -> None:
    # 16 steps of 8 over 96 samples = 1.33 epochs, so the kill and resume cross an epoch.
    # bf16: the exact resume holds under bf16 autocast too (the optimizer state stays fp32).
    steps, w, a = 16, f"data.num_workers={workers}", f"train.amp={amp}"
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run([*_python(), str(full), str(steps), "0", w, a], check=True, capture_output=True)
    proc = subprocess.Popen([*_python(), str(killed), str(steps), "0.02", w, a])
    wait_for_checkpoint(killed, proc, 8)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "final.pt").exists()  # it really died mid-run
    out = subprocess.run(
        [*_python(), str(killed), str(steps), "0", "resume=auto", w, a],
        check=True,
        capture_output=True,
    )
    assert b"resumed from" in out.stdout
    a = torch.load(full / "final.pt", weights_only=True)
    b = torch.load(killed / "final.pt", weights_only=True)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # Steps logged after the step-8 checkpoint and before the kill are logged again on
    # resume; the log holds each step once, with the uninterrupted run's values.
    full_log, killed_log = _metrics(full), _metrics(killed)
    assert [r["step"] for r in killed_log] == [r["step"] for r in full_log] == list(range(2, 17, 2))
    for r_full, r_killed in zip(full_log, killed_log, strict=True):
        assert r_killed["loss"] == pytest.approx(r_full["loss"], rel=1e-6), r_full["step"]


def test_sigterm_writes_checkpoint_and_exits_cleanly(tmp_path: Path) -> None:
    proc = subprocess.Popen([*_python(), str(tmp_path), "400", "0.02"], stdout=subprocess.PIPE)
    wait_for_checkpoint(tmp_path, proc, 4)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM  # stopped, checkpointed, not "done"
    assert out.decode().strip().startswith("interrupted")
    step = int(out.decode().split()[-1])
    assert 4 <= step < 400
    assert latest_checkpoint(tmp_path).name == f"step_{step:08d}"  # type: ignore[union-attr]


_DDP_WORKER = """
import os, sys, torch
sys.path.insert(0, {here!r})
from toy_task import run_toy
from cimpt.engine.distributed import cleanup
try:  # as the CLI does: leave no gloo group alive at exit ("terminate called ...")
    result, model = run_toy({run!r}, 4, ["train.batch_size=8"])
    torch.save(model.state_dict(), os.path.join({run!r}, f"rank{{os.environ['RANK']}}.pt"))
finally:
    cleanup()
"""


def test_two_process_gloo_ranks_stay_identical(tmp_path: Path, e2e) -> None:
    script = tmp_path / "worker.py"
    script.write_text(_DDP_WORKER.format(here=str(Path(__file__).parent), run=str(tmp_path)))
    e2e.run_two_ranks([str(script)], timeout=120)  # a free port, and each rank's stderr on failure
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    torch.manual_seed(123)
    init = ToyModel().state_dict()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    assert any(not torch.equal(w0[k], init[k]) for k in w0)  # it did train


def _hold_lock(run_dir: Path) -> subprocess.Popen[bytes]:
    """Another process that takes ``run_dir``'s lock and keeps it for a minute."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from cimpt.engine.runlock import RunLock; "
            f"RunLock({str(run_dir)!r}).acquire(); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
    return holder


def test_ddp_ranks_all_stop_when_rank_0_cannot_take_the_run_dir(tmp_path: Path) -> None:
    import socket

    script = tmp_path / "worker.py"
    script.write_text(_DDP_WORKER.format(here=str(Path(__file__).parent), run=str(tmp_path)))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": "2"}
    holder = _hold_lock(tmp_path)
    try:
        procs = [
            subprocess.Popen(
                [sys.executable, str(script)],
                env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                stderr=subprocess.PIPE,
            )
            for r in range(2)
        ]
        # Rank 1 must not wait in a collective for a rank 0 that has left.
        errs = [p.communicate(timeout=120)[1].decode() for p in procs]
    finally:
        holder.kill()
        holder.wait()
    assert [p.returncode for p in procs] != [0, 0] and all(p.returncode for p in procs)
    assert f"in use by another cimpt run (pid {holder.pid})" in errs[0]
    assert "in use by another cimpt run (rank 0 says which)" in errs[1]
    assert not (tmp_path / "metrics.jsonl").exists()


def test_second_run_on_a_run_dir_gets_one_clear_error(tmp_path: Path) -> None:
    from cimpt.engine.runlock import RunLock

    # Another process holds the directory: its pid is named, nothing is written.
    holder = _hold_lock(tmp_path)
    try:
        with pytest.raises(CimptError) as err:
            run_toy(str(tmp_path), 4)
        assert f"in use by another cimpt run (pid {holder.pid})" in str(err.value)
        assert not (tmp_path / "metrics.jsonl").exists()
        assert not (tmp_path / "config.yaml").exists()
    finally:
        holder.kill()
        holder.wait()
    # The lock died with its holder (SIGKILL); a second trainer in this process is refused
    # while the first holds the directory; a finished run releases its lock.
    with RunLock(tmp_path), pytest.raises(CimptError, match=f"pid {os.getpid()}"):
        run_toy(str(tmp_path), 4)
    run_toy(str(tmp_path), 4)
    result, _ = run_toy(str(tmp_path), 6, ["resume=auto"])
    assert result.state.step == 6


def test_restart_in_an_old_run_dir_does_not_duplicate_log_records(tmp_path: Path) -> None:
    run_toy(str(tmp_path), 6)
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 7, "loss": 1.')  # a line a crash cut short
    # No resume: a fresh start is refused, then with run.overwrite=true it replaces the old
    # run (checkpoints and log) instead of mixing with it.
    with pytest.raises(CimptError, match=r"holds an earlier run .*resume=auto.*run\.overwrite"):
        run_toy(str(tmp_path), 4)
    run_toy(str(tmp_path), 4, ["run.overwrite=true"])
    assert [r["step"] for r in _metrics(tmp_path)] == [2, 4]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000004"]


def test_every_start_records_what_auto_became(tmp_path: Path, monkeypatch, capsys) -> None:
    """environment.jsonl: one line per start with the resolved precision and the start step;
    a resume on a machine where ``train.amp=auto`` means something else shows as mixed, and
    run.overwrite clears the old run's lines with the rest of its log."""
    import cimpt.engine.precision as P
    from cimpt.engine.environment import read_environment, run_precision

    assert run_precision(tmp_path) == "unrecorded"
    run_toy(str(tmp_path), 4)  # auto on a CPU without bf16 units (conftest): fp32
    monkeypatch.setattr(P, "cpu_bf16_units", lambda: "AMX")  # "moved" to an AMX machine
    run_toy(str(tmp_path), 6, ["resume=auto"])
    note = "note: this run computed in fp32 (cpu) up to step 4 and goes on in bf16 autocast"
    assert note in capsys.readouterr().err
    recs = read_environment(tmp_path)
    assert [(r["step"], r["amp"], r["world_size"]) for r in recs] == [
        (0, "fp32", 1),
        (4, "bf16", 1),
    ]
    assert recs[1]["precision"] == "bf16 autocast (CPU with AMX)"
    assert recs[0]["device"] == "cpu" and recs[0]["torch"] == torch.__version__
    assert run_precision(tmp_path) == "mixed: fp32, bf16"
    with open(tmp_path / "environment.jsonl", "a") as fh:
        fh.write('{"step": 6, "amp": "fp')  # cut short by a full disk: skipped, not fatal
    assert len(read_environment(tmp_path)) == 2
    run_toy(str(tmp_path), 2, ["run.overwrite=true", "train.amp=none"])
    assert "note: this run computed" not in capsys.readouterr().err  # a fresh start
    assert [(r["step"], r["amp"]) for r in read_environment(tmp_path)] == [(0, "fp32")]
    assert run_precision(tmp_path) == "fp32"


def test_resume_drops_log_records_written_after_the_checkpoint(tmp_path: Path) -> None:
    import shutil

    run_toy(str(tmp_path), 6)  # checkpoints at 4 and 6, log records at 2, 4, 6
    first = {r["step"]: r for r in _metrics(tmp_path)}
    # As if the run had died after logging step 6 but before its step-6 checkpoint landed.
    shutil.rmtree(latest_checkpoint(tmp_path))  # type: ignore[arg-type]
    result, _ = run_toy(str(tmp_path), 6, ["resume=auto"])
    assert result.state.step == 6
    again = _metrics(tmp_path)
    assert [r["step"] for r in again] == [2, 4, 6]
    assert again[2]["loss"] == pytest.approx(first[6]["loss"], rel=1e-6)


def test_trimming_keeps_records_it_does_not_understand(tmp_path: Path) -> None:
    from cimpt.engine.metrics import keep_records_through

    path = tmp_path / "metrics.jsonl"
    lines = ['{"step": 2, "a": 1}', '{"step": 6}', '{"note": "x"}', '{"step": null}', "[1]"]
    path.write_text("\n".join([*lines, '{"step": 3, "cut', ""]))
    keep_records_through(path, 4)
    assert path.read_text().splitlines() == [lines[0], *lines[2:]]


def test_fit_can_keep_the_run_dir_for_writes_after_training(tmp_path: Path) -> None:
    from cimpt.engine.loop import Trainer
    from cimpt.engine.runlock import RunLock

    torch.manual_seed(123)
    trainer = Trainer(ToyTask(ToyModel(), ToyData(), toy_collate), toy_config(str(tmp_path), 2))
    trainer.fit(keep_lock=True)
    with pytest.raises(CimptError, match="in use"):
        RunLock(tmp_path).acquire()  # still ours while the caller evaluates
    trainer.close()
    with RunLock(tmp_path):
        pass


def test_start_up_prints_a_time_estimate_from_the_measured_rate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Each toy step sleeps 0.05 s, so the measured rate cannot be faster than that.
    run_toy(str(tmp_path / "run"), 10, ["run.progress=true"], sleep=0.05)
    err = capsys.readouterr().err
    assert "a time estimate follows the first log record" in err
    lines = [ln[ln.index("time: ") :] for ln in err.splitlines() if "time: " in ln]
    assert len(lines) == 1  # once, at the first log record (step 2 of 10)
    m = re.match(
        r"time: ([\d.e+-]+) s/step .* first 2 steps: about (\d+) s for the 8 steps", lines[0]
    )
    assert m is not None, lines[0]
    s_per_step = float(m.group(1))
    assert 0.05 <= s_per_step < 5
    assert int(m.group(2)) == round(8 * s_per_step)


class _EvalEveryEpoch(ToyTask):
    eval_every_epochs = 1

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.eval_steps: list[int] = []

    def evaluate(self, model, step):
        self.eval_steps.append(step)
        return {"val": 0.0}


def test_a_resumed_epoch_still_evaluates_at_its_end(tmp_path: Path) -> None:
    """96 images in batches of 8: 12 steps per epoch. Resumed at step 4, the sampler starts
    part-way through the epoch; evaluations must stay at 12 and 24, and the epoch count right
    (it evaluated at step 8 as 'epoch 1.00', the remaining 8 steps taken for an epoch)."""
    from cimpt.engine.loop import Trainer

    def fit(steps: int, *extra: str) -> tuple[list[int], Trainer]:
        torch.manual_seed(123)
        task = _EvalEveryEpoch(ToyModel(), ToyData(96), toy_collate)
        trainer = Trainer(task, toy_config(str(tmp_path), steps, extra))
        trainer.fit()
        return task.eval_steps, trainer

    assert fit(4)[0] == [4]  # the last step always evaluates
    steps, trainer = fit(24, "resume=auto")
    assert steps == [12, 24]
    trainer.sampler.set_start(32)
    assert trainer.steps_per_epoch() == 12
