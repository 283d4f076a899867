"""The training loop (docs/DESIGN.md lesson 2: the model returns losses, the loop trains).

Handles device placement, DDP under torchrun, bf16/fp16 autocast, gradient accumulation,
clipping, the NaN guard, per-step lr schedule, progress bar, JSONL/TensorBoard logs,
atomic checkpoints, ``resume=auto`` with the exact data position, and SIGTERM/SIGINT.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from tqdm import tqdm

from cimpt.config import TrainConfig, save_config, to_dict, typed
from cimpt.engine import distributed as D
from cimpt.engine.checkpoint import (
    clear_run,
    list_checkpoints,
    module_tensors,
    remove_stale_temporaries,
    save_checkpoint,
)
from cimpt.engine.environment import record_start
from cimpt.engine.metrics import MetricsLogger, RunningMeans, peak_memory_mb
from cimpt.engine.optim import build_adamw
from cimpt.engine.precision import autocast, choose_attention, describe, resolve_amp
from cimpt.engine.resume import find_resume_checkpoint, restore
from cimpt.engine.rng import rng_state, seed_everything
from cimpt.engine.runlock import RunLock
from cimpt.engine.schedule import scaled_lr, warmup_cosine
from cimpt.engine.task import Task
from cimpt.errors import CimptError
from cimpt.models.modes import eval_mode


@dataclass
class LoopState:
    """Where the run is; saved with every checkpoint."""

    step: int = 0  # optimizer updates done
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of this epoch already consumed
    skipped_images: int = 0
    nan_streak: int = 0
    nan_total: int = 0


@dataclass
class StepOutput:
    """What ``Trainer.train_step`` did."""

    values: dict[str, torch.Tensor | float]  # mean scalars over micro-batches, on the device
    schedule: dict[str, float]  # lr and the task's schedule values for this step
    ok: bool  # the update was applied (every rank had finite gradients)
    stop: bool  # some rank asked to stop (signal)
    batch: dict[str, Any]  # the last micro-batch (for figures)


@dataclass
class FitResult:
    state: LoopState
    run_dir: Path
    interrupted: bool
    last_checkpoint: Path | None
    last_metrics: dict[str, float]
    signal: int = 0  # the signal that stopped the run (0: it ran to the end)


class _StopFlag:
    """Set by SIGTERM/SIGINT; the loop checkpoints and exits after the current step.

    A second signal while the first is being handled quits at once (the checkpoint being
    written, if any, is atomic, so nothing is left half-written).
    """

    def __init__(self) -> None:
        self.set = False
        self.signum = 0
        self._announced = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.set:
            raise SystemExit(128 + signum)  # second signal: force quit
        # Only flags here: writing to stderr from a handler can collide with the progress bar.
        self.set, self.signum = True, signum

    def announce(self) -> None:
        """Say once, from the loop, that a signal arrived and what happens next."""
        if self.signum and not self._announced:
            self._announced = True
            tqdm.write(
                f"{signal.Signals(self.signum).name}: stopping after this step with a "
                "checkpoint (send it again to quit at once)",
                file=sys.stderr,
            )

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class _Window:
    """The micro-batches of a run, counted between two log lines: images per second and the
    share of that time spent waiting for data."""

    def __init__(
        self,
        batches: Iterator[dict[str, Any]],
        size_of: Callable[[dict[str, Any]], int],
        world: int,
    ) -> None:
        self._batches, self._size_of, self._world = batches, size_of, world
        self._reset()

    def _reset(self) -> None:
        self._t0, self._images, self._wait = time.perf_counter(), 0, 0.0

    def next_batch(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        batch = next(self._batches)
        self._wait += time.perf_counter() - t0
        # Every rank reads the same number of images: the job's rate is world x this one's.
        self._images += self._size_of(batch) * self._world
        return batch

    def pop_rates(self) -> tuple[float, float]:
        """(images per second, data-wait fraction) since the last call; starts a new window."""
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        rates = self._images / elapsed, self._wait / elapsed
        self._reset()
        return rates


@dataclass
class _FitRun:
    """What one ``fit`` carries from step to step besides ``LoopState``."""

    window: _Window
    bar: tqdm
    means: RunningMeans = field(default_factory=RunningMeans)  # scalars since the last log
    last_metrics: dict[str, float] = field(default_factory=dict)
    last_checkpoint: Path | None = None


def _duration(seconds: float) -> str:
    """``42 s``, ``17 min`` or ``3.5 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def print_resume_hint(result: FitResult, command: str) -> None:
    """After an interrupted run: where it stopped and the command that continues it
    (``cimpt <command> RUN_DIR resume=auto``, a run directory being a config)."""
    print(f"stopped at step {result.state.step}; checkpoint: {result.last_checkpoint}")
    print(f"continue with: cimpt {command} {result.run_dir} resume=auto")


def exit_status(result: FitResult) -> int:
    """The process exit status for a finished ``fit``: 0, or 128 + the signal that stopped
    it (130 for Ctrl-C, 143 for SIGTERM), so that ``cimpt pretrain ... && next`` and
    schedulers that requeue on failure do not treat a stopped run as done."""
    if not result.interrupted:
        return 0
    # A rank stopped because another rank was signalled knows no signal of its own.
    return 128 + (result.signal or int(signal.SIGTERM))


def _micro_batch(t: TrainConfig, world: int) -> int:
    per_step = t.batch_size // world
    if per_step * world != t.batch_size or per_step % t.accum_steps:
        raise CimptError(
            f"train.batch_size={t.batch_size} must divide by world size {world} x "
            f"train.accum_steps={t.accum_steps}"
        )
    return per_step // t.accum_steps


class Trainer:
    """Runs a ``Task`` for ``train.max_steps`` or ``train.epochs``."""

    def __init__(self, task: Task, cfg: DictConfig, dist: D.DistInfo | None = None) -> None:
        # ``cfg`` is the record saved into the run and its checkpoints (and compared on
        # resume); the loop reads ``settings``, the same values typed, so mypy checks them.
        self.task, self.cfg, self.settings = task, cfg, typed(cfg)
        self.dist = dist or D.init_distributed(self.settings.train.device)
        self.device = self.dist.device
        self.run_dir = Path(self.settings.run.dir).expanduser()
        self.lock = self._take_lock()
        try:
            self._setup(task)
        except BaseException:
            self.lock.release(undo=not (self.run_dir / "config.yaml").exists())
            raise

    def _take_lock(self) -> RunLock:
        """Before resuming or writing anything: one process per run directory. Rank 0 takes
        the lock; every rank learns whether it did, so that all stop together instead of the
        others waiting in DDP's first collective for a rank 0 that has left."""
        lock, refused = RunLock(self.run_dir), None
        if self.dist.is_main:
            try:
                lock.acquire()
            except CimptError as e:
                refused = e
        if D.any_rank(refused is not None, self.device):
            raise refused or CimptError(
                f"run.dir {self.run_dir}: in use by another cimpt run (rank 0 says which)"
            )
        return lock

    def close(self) -> None:
        """Close the logs and release the run directory (``fit`` does it when it ends)."""
        self.logger.close()
        self.lock.release()

    def _setup(self, task: Task) -> None:
        cfg = self.settings
        self.amp_dtype = resolve_amp(cfg.train.amp, self.device)
        self.micro = _micro_batch(cfg.train, self.dist.world_size)
        if self.dist.is_main:
            stale = remove_stale_temporaries(self.run_dir)
            if stale:
                print(f"note: removed {len(stale)} temporary file(s) left by a killed run")
        self.state = LoopState()
        seed_everything(cfg.seed + self.dist.rank, cfg.train.deterministic)
        self._build_data()
        self.model = task.model.to(self.device)
        choose_attention(self.model, self.device, self.amp_dtype)
        if cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        task.on_device(self.device)
        self.base_lr = scaled_lr(cfg.train.blr, cfg.train.lr, cfg.train.batch_size)
        self.optimizer = build_adamw(
            self.model,
            self.base_lr,
            cfg.train.weight_decay,
            (cfg.train.betas[0], cfg.train.betas[1]),  # checked: two values
            task.param_groups(cfg.train.weight_decay),
        )
        self.scaler = torch.amp.GradScaler(enabled=self.amp_dtype == torch.float16)
        self._check_fresh_start()
        self.resumed_from = self._maybe_resume()
        self.start_step = self.state.step
        # The last step checkpointed by this process (or resumed from). No checkpoint is
        # written in a NaN streak, so during one it is the last step before the streak.
        self._last_saved_step: int | None = self.state.step if self.resumed_from else None
        self.total_steps = self._total_steps()
        self.warmup_steps = min(
            self.total_steps, round(cfg.train.warmup_epochs * self.steps_per_epoch_or_total())
        )
        self.wrapped = self._wrap(self.model)
        self.logger = MetricsLogger(
            self.run_dir,
            self.dist.is_main,
            cfg.run.tensorboard,
            start_step=self.state.step,
            kind=self.task.kind,
        )
        if self.dist.is_main:
            save_config(self.cfg, self.run_dir / "config.yaml")
            # What train.amp=auto and train.device=auto became here (environment.py's doc).
            note = record_start(
                self.run_dir, self.device, self.amp_dtype, self.dist.world_size, self.state.step
            )
            if note:
                print(note, file=sys.stderr)
            if cfg.run.progress:  # beside the progress bar, on stderr
                print(f"precision: {describe(self.amp_dtype, self.device)}", file=sys.stderr)
                print(self.summary(), file=sys.stderr)
            for line in self.recipe_warnings():
                print(f"warning: {line}", file=sys.stderr)

    # ----- set-up -------------------------------------------------------------------------
    def _build_data(self) -> None:
        from cimpt.data import ResumableSampler, build_loader
        from cimpt.data.seeded import SeededCollate, SeededSamples

        ds, collate = self.task.dataset, self.task.collate
        self.sampler = None
        if hasattr(ds, "__len__"):
            n = len(ds)
            if n < self.settings.train.batch_size:
                raise CimptError(
                    f"data: the dataset yields {n} images, fewer than one batch "
                    f"(train.batch_size={self.settings.train.batch_size})"
                )
            # Per-sample seeds make crops and masks independent of workers and of restarts.
            ds, collate = SeededSamples(ds, self.settings.seed), SeededCollate(collate)
            self.sampler = ResumableSampler(
                n,
                shuffle=True,
                seed=self.settings.seed,
                rank=self.dist.rank,
                world=self.dist.world_size,
                drop_last=True,
                encode_epoch=True,
            )
        elif self.settings.train.max_steps <= 0:
            raise CimptError("train.max_steps: a streaming (tar) dataset has no length; set it")
        self.loader = build_loader(
            ds,
            self.micro,
            self.settings.data.num_workers,
            collate,
            self.sampler,
            self.settings.seed,
            drop_last=True,
        )

    def summary(self) -> str:
        """One start-up line: what the run will do (images, batch, lr, steps, epochs)."""
        t, per_epoch = self.settings.train, self.steps_per_epoch()
        images = f"{len(self.sampler)} images" if self.sampler is not None else "streamed images"
        epochs = f" = {self.total_steps / per_epoch:.2f} epochs" if per_epoch else ""
        return (
            f"{self.task.label or self.task.kind}: {images} on {self.dist.world_size} "
            f"process(es); batch "
            f"{t.batch_size} ({self.micro} per process x {t.accum_steps} accumulation); lr "
            f"{self.base_lr:.3g}; {self.total_steps} steps{epochs}, {self.warmup_steps} "
            f"warm-up; starting at step {self.state.step}"
            + (f"; {extra}" if (extra := self.task.describe()) else "")
            + " (a time estimate follows the first log record)"
        )

    def time_estimate(self, img_per_s: float) -> str:
        """The time left at a measured rate: one line for the start of a run."""
        left = self.total_steps - self.state.step
        s_per_step = self.settings.train.batch_size / max(img_per_s, 1e-9)
        return (
            f"time: {s_per_step:.3g} s/step ({img_per_s:.0f} img/s) over the first "
            f"{self.state.step - self.start_step} steps: about {_duration(left * s_per_step)} "
            f"for the {left} steps left (evaluations and figures not counted)"
        )

    def recipe_warnings(self) -> list[str]:
        """Budgets that make the schedule meaningless, said before the run spends them."""
        out = []
        if self.warmup_steps >= self.total_steps > 1:
            out.append(
                f"the warm-up ({self.warmup_steps} steps) covers the whole run "
                f"({self.total_steps} steps): the lr only ever rises; lower "
                "train.warmup_epochs or train longer"
            )
        if 0 < self.steps_per_epoch() < 5:
            out.append(
                f"{self.steps_per_epoch()} steps per epoch: with so few images per epoch, "
                "lower train.batch_size (the lr follows it) or see README, 'Small data'"
            )
        return out

    def steps_per_epoch(self) -> int:
        if self.sampler is None:
            return 0
        # The whole epoch, not len(): a resumed epoch's sampler starts part-way through it.
        return self.sampler.num_samples // self.micro // self.settings.train.accum_steps

    def steps_per_epoch_or_total(self) -> int:
        return self.steps_per_epoch() or self.total_steps

    def _total_steps(self) -> int:
        t = self.settings.train
        if t.max_steps > 0:
            return int(t.max_steps)
        if self.steps_per_epoch() == 0:
            raise CimptError("data: not enough images for one optimizer step per epoch")
        return int(t.epochs * self.steps_per_epoch())

    def _check_fresh_start(self) -> None:
        """A run started without ``resume`` in a directory that holds another run's checkpoints
        would mix the two (and a later ``resume=auto`` would pick up the old weights): refuse,
        unless ``run.overwrite=true`` asks to delete the old run's checkpoints and outputs.

        Rank 0 looks and decides for every rank (one reduction), so all ranks refuse or wait
        together while it deletes."""
        if self.settings.resume:
            return
        found = list_checkpoints(self.run_dir) if self.dist.is_main else []
        if not D.any_rank(bool(found), self.device):
            return
        if not self.settings.run.overwrite:
            where = f" (checkpoint {found[-1].name})" if found else ""
            raise CimptError(
                f"run.dir {self.run_dir} holds an earlier run{where}: continue it with "
                "resume=auto, or start afresh with run.overwrite=true (deletes its "
                "checkpoints and outputs), or choose another run.dir"
            )
        if self.dist.is_main:
            clear_run(self.run_dir)
            print(f"note: run.overwrite=true: removed the earlier run in {self.run_dir}")
        D.barrier()

    def _maybe_resume(self) -> Path | None:
        ckpt = find_resume_checkpoint(self.settings.resume, self.run_dir)
        if ckpt is None:
            if self.settings.resume == "auto" and self.dist.is_main:
                # Say so: a user who meant to continue (a typo in run.dir) would otherwise
                # only notice from the step count.
                print(f"note: resume=auto: no checkpoint in {self.run_dir}; starting fresh")
            return None
        self.state = restore(
            ckpt, self.task, self.cfg, self.optimizer, self.scaler, LoopState, self.device
        )
        if self.dist.is_main:
            print(f"resumed from {ckpt} at step {self.state.step}")
        return ckpt

    def _wrap(self, model: nn.Module) -> nn.Module:
        wrapped: nn.Module = model
        if self.dist.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if self.settings.train.compile:
            wrapped = torch.compile(wrapped)  # type: ignore[assignment]
        return wrapped

    # ----- data ---------------------------------------------------------------------------
    def _batches(self) -> Iterator[dict[str, Any]]:
        """Micro-batches forever, epoch after epoch, starting at the saved data position."""
        while True:
            skip = self.state.batch_in_epoch
            if self.sampler is not None:
                self.sampler.set_epoch(self.state.epoch)
                self.sampler.set_start(skip * self.micro)
                skip = 0
            else:
                set_epoch = getattr(self.task.dataset, "set_epoch", None)
                if callable(set_epoch):
                    set_epoch(self.state.epoch)
            for i, batch in enumerate(self.loader):
                if i < skip:  # streaming data cannot seek: fast-forward instead
                    continue
                self.state.batch_in_epoch += 1
                if self.state.epoch == 0:
                    # Unreadable files, each counted once: every epoch reads the same files,
                    # so counting later epochs too reported one broken file once per epoch.
                    self.state.skipped_images += int(batch.get("skipped", 0))
                if "x" in batch and self.task.batch_size_of(batch) == 0:
                    continue  # every image of this batch was unreadable
                yield batch
            self.state.epoch += 1
            self.state.batch_in_epoch = 0

    def to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch's tensors on the run's device (images channels-last when the config
        asks); other values as they are."""
        out = {}
        for k, v in batch.items():
            if isinstance(v, torch.Tensor):
                v = v.to(self.device, non_blocking=True)
                if self.settings.train.channels_last and v.ndim == 4:
                    v = v.contiguous(memory_format=torch.channels_last)
            out[k] = v
        return out

    # ----- one optimizer step ---------------------------------------------------------------
    def _set_lr(self) -> float:
        lr = warmup_cosine(
            self.state.step,
            self.total_steps,
            self.warmup_steps,
            self.base_lr,
            self.settings.train.min_lr,
        )
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)  # layer-wise lr decay, when the task asks
        return lr

    def forward_backward(self, batch: dict[str, Any], sync: bool) -> dict[str, torch.Tensor]:
        """Forward under autocast and backward of ``loss / accum_steps`` on a device batch;
        returns the model's outputs. ``sync=False`` (not the last micro-batch) skips DDP's
        gradient all-reduce."""
        ctx = (
            self.wrapped.no_sync()
            if not sync and isinstance(self.wrapped, nn.parallel.DistributedDataParallel)
            else contextlib.nullcontext()
        )
        with ctx:
            with autocast(self.device, self.amp_dtype):
                out = self.wrapped(batch)
            loss = out["loss"] / self.settings.train.accum_steps
            self.scaler.scale(loss).backward()
        return out

    def optimizer_step(
        self, finite_local: torch.Tensor | bool, stop_local: bool
    ) -> tuple[torch.Tensor, bool, bool]:
        """Clip, check finiteness on every rank, step or skip. Returns (grad norm, ok, stop).

        The grad norm stays a device tensor; the one host read per step is the two flags that
        decide, for all ranks alike, whether to apply the update and whether to stop.
        """
        self.scaler.unscale_(self.optimizer)
        clip = self.settings.train.clip_grad if self.settings.train.clip_grad > 0 else math.inf
        params = [p for p in self.model.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(params, clip)
        finite = torch.isfinite(norm) & torch.as_tensor(finite_local, device=norm.device)
        flags = torch.stack([finite.float(), torch.tensor(float(stop_local), device=norm.device)])
        # One reduction decides for all ranks, so they skip or stop together.
        n_ok, n_stop = D.all_reduce_sum(flags.to(self.device)).tolist()
        ok, stop = n_ok == self.dist.world_size, n_stop > 0
        if ok:
            self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return norm.detach(), ok, stop

    def train_step(
        self, next_batch: Callable[[], dict[str, Any]], stop_requested: bool = False
    ) -> StepOutput:
        """One optimizer update: schedules, ``accum_steps`` micro-batches from ``next_batch``
        (forward + backward each), then clip, the NaN guard and AdamW.

        Scalars stay on the device (``StepOutput.values``); nothing is read back but the
        step/stop flags (see ``optimizer_step``).
        """
        sched = self.task.on_step(self.state.step, self.total_steps)
        lr = self._set_lr()
        # Forward passes update buffers (BatchNorm running statistics); a skipped step must
        # leave them as they were too, so keep a copy to put back (small next to a step).
        buffers = list(self.model.buffers())
        saved = [b.detach().clone() for b in buffers]
        finite: torch.Tensor | bool = True
        step_vals = RunningMeans()
        batch: dict[str, Any] = {}
        accum = self.settings.train.accum_steps
        for micro in range(accum):
            batch = next_batch()
            out = self.forward_backward(self.to_device(batch), sync=micro == accum - 1)
            scalars = {k: v.detach() for k, v in out.items() if v.numel() == 1}
            finite = torch.isfinite(scalars["loss"]) & finite
            step_vals.add(scalars)
        norm, ok, stop = self.optimizer_step(finite, stop_requested)
        if not ok:
            with torch.no_grad():
                for b, old in zip(buffers, saved, strict=True):
                    b.copy_(old)
        return StepOutput(
            {**step_vals.pop_lazy(), "grad_norm": norm}, {**sched, "lr": lr}, ok, stop, batch
        )

    # ----- the loop -----------------------------------------------------------------------
    def fit(self, keep_lock: bool = False) -> FitResult:
        """Train to the end (or a signal). ``keep_lock``: the caller writes more into the run
        directory afterwards (an evaluation) and calls ``close`` itself."""
        try:
            return self._fit()
        finally:
            self.logger.close()
            if not keep_lock:
                self.lock.release()

    def _fit(self) -> FitResult:
        """``train_step`` until ``total_steps`` or a signal; after each, the bookkeeping
        (``_end_step``) and the periodic work (``_periodic``: log, evaluate, figure,
        checkpoint)."""
        run = _FitRun(
            _Window(self._batches(), self.task.batch_size_of, self.dist.world_size),
            tqdm(
                total=self.total_steps,
                initial=self.state.step,
                unit="step",
                dynamic_ncols=True,
                disable=not (self.dist.is_main and self.settings.run.progress),
            ),
            last_checkpoint=self.resumed_from,
        )
        interrupted = False
        self.model.train()
        with _StopFlag() as stop_flag:
            while self.state.step < self.total_steps:
                step = self.train_step(run.window.next_batch, stop_flag.set)
                stop_flag.announce()
                self._end_step(step, run)
                self._periodic(step, run)
                if step.stop:
                    interrupted = True
                    break
        run.bar.close()
        if self.dist.is_main and not interrupted:
            self.task.finish(self.run_dir)
        signum = stop_flag.signum if interrupted else 0
        return FitResult(
            self.state, self.run_dir, interrupted, run.last_checkpoint, run.last_metrics, signum
        )

    def _end_step(self, step: StepOutput, run: _FitRun) -> None:
        """Count the step; keep its scalars for the next log line, or count it as skipped
        (``_on_nonfinite`` stops the run after ``run.max_nan_steps`` in a row)."""
        st = self.state
        st.step += 1
        run.bar.update(1)
        if step.ok:
            st.nan_streak = 0
            run.means.add(step.values)  # stays on the device until the log step
            self.task.after_optimizer_step(st.step)
        else:
            st.nan_streak += 1
            st.nan_total += 1
            self._on_nonfinite()

    def _periodic(self, step: StepOutput, run: _FitRun) -> None:
        """What is due after the step that just ended: log line, evaluation, figure,
        checkpoint (a stop request makes the checkpoint due)."""
        st, last = self.state, self.state.step == self.total_steps
        if st.step % self.settings.run.log_every == 0 or last:
            self._log(step, run)
        if self._eval_due():
            self._evaluate()
        every = self.settings.run.vis_every
        if self.dist.is_main and every > 0 and (st.step % every == 0 or last):
            self.task.visualize(st.step, step.batch, self.run_dir)
            self.logger.log_figures(st.step, self.run_dir / "figures")
        if step.stop or st.step % self.settings.run.ckpt_every == 0 or last:
            self._checkpoint(run)

    def _log(self, step: StepOutput, run: _FitRun) -> None:
        """One log record: the means since the last one (one device-to-host transfer for all
        of them, ``RunningMeans.pop``), the schedules, throughput and counters."""
        st = self.state
        img_per_s, wait_frac = run.window.pop_rates()
        first = not run.last_metrics  # this fit's first record: it carries the time estimate
        run.last_metrics = {
            **run.means.pop(),
            **step.schedule,
            "epoch": st.epoch,
            "img_per_s": img_per_s,
            "data_wait_frac": wait_frac,
            "peak_mem_mb": peak_memory_mb(self.device),
            "skipped_images": st.skipped_images,
            "nan_skipped": st.nan_total,
        }
        self.logger.log(st.step, run.last_metrics)
        more = st.step < self.total_steps
        if first and more and self.dist.is_main and self.settings.run.progress:
            run.bar.write(self.time_estimate(img_per_s), file=sys.stderr)  # above the bar
        run.bar.set_postfix(
            loss=f"{run.last_metrics.get('loss', float('nan')):.4f}", img_s=f"{img_per_s:.0f}"
        )

    def _checkpoint(self, run: _FitRun) -> None:
        """A due checkpoint, unless in a NaN streak: the last good one must survive the
        pruning, for the advice of the NaN error to work."""
        if self.state.nan_streak > 0:
            if self.dist.is_main:
                tqdm.write(f"step {self.state.step}: checkpoint withheld (in a NaN streak)")
            return
        run.last_checkpoint = self.save()

    def _eval_due(self) -> bool:
        """At the end of every ``task.eval_every_epochs``-th epoch, and after the last step."""
        every = self.task.eval_every_epochs
        if every <= 0:
            return False
        spe = self.steps_per_epoch()
        at_end = self.state.step == self.total_steps
        return at_end or (spe > 0 and self.state.step % (spe * every) == 0)

    def _evaluate(self) -> None:
        with eval_mode(self.model):
            vals = self.task.evaluate(self.model, self.state.step)
        if vals:
            spe = self.steps_per_epoch()
            epochs = self.state.step / spe if spe else float(self.state.epoch)
            self.logger.log(self.state.step, {**vals, "epochs_done": epochs})
            if self.dist.is_main:
                shown = ", ".join(f"{k}={v:.4g}" for k, v in vals.items())
                tqdm.write(f"step {self.state.step} (epoch {epochs:.2f}): {shown}")

    def _nan_advice(self, first_bad: int) -> str:
        """Where to go after a NaN streak that began at step ``first_bad``."""
        fresh = "start afresh with a lower lr (run.overwrite=true)"
        before = self._last_saved_step  # unchanged since the streak began (none written)
        if before is None:
            return f"no checkpoint was written before it: {fresh}"
        advice = (
            f"resume=auto restarts from the step-{before} checkpoint, the last one written "
            "before the streak"
        )
        if first_bad - before <= self.settings.run.max_nan_steps:
            # Finite is not sound: weights can diverge for a few steps before a loss overflows.
            advice += (
                f"; it was written {first_bad - before} step(s) before the first bad one and "
                f"may already hold diverging weights: if the resumed run fails the same way, "
                f"{fresh}"
            )
        return advice

    def _on_nonfinite(self) -> None:
        """A skipped step: warn (its count reaches metrics.jsonl with the next log record,
        so each step keeps one record) and stop after ``run.max_nan_steps`` in a row."""
        st = self.state
        if self.dist.is_main:
            tqdm.write(
                f"step {st.step}: loss or gradients not finite; update skipped "
                f"({st.nan_streak} in a row, {st.nan_total} in all)",
                file=sys.stderr,
            )
        if st.nan_streak >= self.settings.run.max_nan_steps:
            where = self._nan_advice(st.step - st.nan_streak + 1)
            raise CimptError(
                f"the loss was NaN or inf for {st.nan_streak} steps in a row (up to step "
                f"{st.step}); no update was applied on those steps. Lower train.blr (or "
                f"train.lr) or check the data; {where}"
            )

    def save(self) -> Path | None:
        """Checkpoint on rank 0 (never one with non-finite weights); others wait."""
        path, error = None, None
        try:
            if self.dist.is_main:
                path = self._save_on_main()
        except CimptError as exc:
            error = exc
        # Every rank learns whether rank 0 failed, so that all stop together.
        if D.any_rank(error is not None, self.device):
            raise error or CimptError("rank 0 could not write the checkpoint (see its error)")
        self._last_saved_step = self.state.step
        return path

    def _save_on_main(self) -> Path:
        """Rank 0's part of ``save``: never a checkpoint with non-finite tensors."""
        tensors = [*self.model.parameters(), *self.model.buffers()]
        tensors_ok = all(torch.isfinite(t).all() for t in tensors if t.is_floating_point())
        if not tensors_ok:
            raise CimptError(
                f"weights hold NaN or inf at step {self.state.step}; checkpoint not written"
            )
        st = self.state
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "loop": dict(st.__dict__),
            "task": self.task.extra_state(),
        }
        meta = {
            "kind": self.task.kind,
            "step": st.step,
            "epoch": st.epoch,
            "config": to_dict(self.cfg),
        }
        path = save_checkpoint(
            self.run_dir,
            st.step,
            module_tensors(self.task.saved_modules()),
            state,
            meta,
            self.settings.run.keep_last,
        )
        return path
