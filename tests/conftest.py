"""Shared fixtures of the end-to-end command tests: tiny images, a tiny tokenizer, tiny runs.

Everything is sized so one CIM step takes well under a second on a 2-core CPU: 32 px images,
an 8x8 token grid (patch 4, tokenizer downsample 4), a 16-code VQ-VAE with random weights, a
one-block ViT enhancer of width 32 and a one-block generator of width 32.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CIM_CONFIG = REPO / "src" / "cimpt" / "configs" / "cifar10_vit.yaml"
TOKENIZER_CONFIG = REPO / "src" / "cimpt" / "configs" / "cifar10_tokenizer.yaml"

IMG_SIZE = 32
N_PER_CLASS = 12
# Architecture of the tiny tokenizer file; repeated in the overrides so that the config the
# user asks for already equals what the tokenizer file says (nothing is adopted from it).
TOKENIZER_ARCH = {"vocab_size": 16, "downsample": 4, "width": 8, "res_blocks": 1, "embed_dim": 8}


def structured_image(seed: int, size: int = IMG_SIZE) -> Image.Image:
    """A ``size`` x ``size`` RGB image with gradients, a bright square and a little noise.

    Structure rather than pure noise, so that crops, flips and tokens differ between images.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    phase = rng.uniform(0, 2 * np.pi, size=3)
    arr = np.stack([0.5 + 0.5 * np.sin(6 * xx + 4 * yy + p) for p in phase], axis=-1)
    x0, y0 = rng.integers(0, size // 2, size=2)
    arr[y0 : y0 + size // 3, x0 : x0 + size // 3] = rng.uniform(0.6, 1.0, size=3)
    arr += rng.normal(0, 0.03, size=arr.shape)
    return Image.fromarray((arr.clip(0, 1) * 255).round().astype(np.uint8))


def write_image_folder(
    root: Path, n_per_class: int = N_PER_CLASS, size: int = IMG_SIZE, classes: Sequence[str] = ()
) -> Path:
    """PNG files ``root/<class>/<i>.png``; returns ``root``."""
    for c, name in enumerate(classes or ("cats", "dogs")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            structured_image(1000 * c + i, size).save(root / name / f"{i:03d}.png")
    return root


def write_tokenizer(path: Path, seed: int = 0, **arch: int) -> Path:
    """A VQ-VAE tokenizer file with random weights (``TOKENIZER_ARCH`` unless overridden)."""
    from cimpt.tokenizers.load import save_tokenizer
    from cimpt.tokenizers.vqvae import VQVAE

    torch.manual_seed(seed)
    return save_tokenizer(VQVAE(**{**TOKENIZER_ARCH, **arch}), path)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread inside the block, then restore the previous count.

    These models are tiny, so a second thread buys nothing, and on a CPU shared with other
    jobs thread contention made a step several times slower (measured: 0.5 s vs 3.3 s for a
    4-step run on 2 busy cores).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """``single_thread`` for the duration of one test."""
    with single_thread():
        yield


@pytest.fixture(autouse=True)
def fp32_on_every_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """``train.amp=auto`` means fp32 on the CPU in every test, whatever the CPU.

    On a CPU with bf16 matrix instructions (AMX, AVX512-BF16) ``auto`` picks bf16, and tests
    that compare two computations to fp32 tolerances (accumulation against one big batch,
    exact resume, hand-computed losses) would then depend on the machine they run on. Tests
    of bf16 itself ask for ``train.amp=bf16`` or patch the probe themselves.
    """
    import cimpt.engine.precision as precision

    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: None)


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 structured 32 px PNGs in two class sub-folders (read-only for the tests)."""
    return write_image_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="session")
def tokenizer_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved 16-code VQ-VAE (downsample 4, random weights)."""
    return write_tokenizer(tmp_path_factory.mktemp("tokenizer") / "tokenizer.safetensors")


def _tiny_schedule(steps: int) -> list[str]:
    """Batch, steps and logging shared by every tiny run: log, checkpoint, draw each run end."""
    return [
        "train.batch_size=4",
        f"train.max_steps={steps}",
        "train.warmup_epochs=0.1",
        "data.num_workers=0",
        "run.log_every=1",
        f"run.ckpt_every={steps}",
        f"run.vis_every={steps}",
        "run.progress=false",
        "run.tensorboard=false",
    ]


def tiny_cim_overrides(
    run_dir: Path,
    data_path: Path,
    tokenizer: Path,
    *,
    objective: str = "respix",
    steps: int = 2,
    extra: Sequence[str] = (),
) -> list[str]:
    """``key=value`` overrides of ``configs/cifar10_vit.yaml`` for a tiny CIM run in ``run_dir``.

    Logs, checkpoints and draws a figure every step unless ``extra`` says otherwise.
    """
    return [
        f"run.dir={run_dir}",
        f"data.path={data_path}",
        f"tokenizer.checkpoint={tokenizer}",
        f"objective={objective}",
        *(f"tokenizer.{k}={v}" for k, v in TOKENIZER_ARCH.items()),
        "enhancer.kwargs={embed_dim: 32, depth: 1, num_heads: 2}",
        "generator.depth=1",
        "generator.embed_dim=32",
        "generator.num_heads=2",
        *_tiny_schedule(steps),
        *extra,
    ]


@pytest.fixture(scope="session")
def cim_overrides(image_folder: Path, tokenizer_file: Path) -> Callable[..., list[str]]:
    """``cim_overrides(run_dir, objective=..., steps=..., extra=[...])`` on the shared data."""

    def make(run_dir: Path, **kw: object) -> list[str]:
        return tiny_cim_overrides(run_dir, image_folder, tokenizer_file, **kw)  # type: ignore[arg-type]

    return make


def run_two_ranks(argv: Sequence[str], timeout: float = 240) -> None:
    """Run ``python argv...`` as ranks 0 and 1 of a gloo job on this machine; both must exit 0."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "WORLD_SIZE": "2",
        "OMP_NUM_THREADS": "1",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, *argv],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for r in range(2)
    ]
    outs = [p.communicate(timeout=timeout) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err.decode()[-2000:]


def run_cli(argv: Sequence[str]) -> int:
    """``cimpt.cli.main`` with argparse's ``SystemExit`` turned into the exit code."""
    from cimpt.cli import main

    try:
        return main(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)


def error_line(stderr: str) -> str:
    """The single non-empty stderr line of a failed command (asserts there is exactly one)."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one error line, got: {lines}"
    assert lines[0].startswith("error:"), lines[0]
    return lines[0]


def import_bench(name: str) -> ModuleType:
    """A benchmark script under bench/ as a module (they import their siblings by name)."""
    bench = str(REPO / "bench")
    sys.path.insert(0, bench)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(bench)


@pytest.fixture(scope="session")
def e2e() -> SimpleNamespace:
    """The helpers of this file for the test modules (they cannot import a conftest)."""
    return SimpleNamespace(
        CIM_CONFIG=CIM_CONFIG,
        TOKENIZER_CONFIG=TOKENIZER_CONFIG,
        TOKENIZER_ARCH=dict(TOKENIZER_ARCH),
        IMAGENET_CONFIG=REPO / "src" / "cimpt" / "configs" / "imagenet_vit_b.yaml",
        run_cli=run_cli,
        run_two_ranks=run_two_ranks,
        error_line=error_line,
        write_image_folder=write_image_folder,
        write_tokenizer=write_tokenizer,
        structured_image=structured_image,
        tiny_cim_overrides=tiny_cim_overrides,
        tiny_tokenizer_overrides=tiny_tokenizer_overrides,
        single_thread=single_thread,
        import_bench=import_bench,
    )


@pytest.fixture(scope="session")
def pretrained_runs(
    tmp_path_factory: pytest.TempPathFactory, cim_overrides: Callable[..., list[str]]
) -> Callable[[str], Path]:
    """``pretrained_runs(objective)`` -> the dir of a finished 2-step run (made once each)."""
    done: dict[str, Path] = {}

    def get(objective: str) -> Path:
        if objective not in done:
            run_dir = tmp_path_factory.mktemp(f"run_{objective}")
            with single_thread():
                code = run_cli(
                    ["pretrain", str(CIM_CONFIG), *cim_overrides(run_dir, objective=objective)]
                )
            assert code == 0
            done[objective] = run_dir
        return done[objective]

    return get


def tiny_tokenizer_overrides(run_dir: Path, data_path: Path, steps: int = 2) -> list[str]:
    """Overrides of ``configs/cifar10_tokenizer.yaml`` for a tiny VQ-VAE run (no evaluation)."""
    return [
        f"run.dir={run_dir}",
        f"data.path={data_path}",
        "data.val_path=",  # the config points at CIFAR-10; tests never depend on it
        *(f"tokenizer.{k}={v}" for k, v in TOKENIZER_ARCH.items()),
        *_tiny_schedule(steps),
    ]


@pytest.fixture(scope="session")
def tokenizer_run(tmp_path_factory: pytest.TempPathFactory, image_folder: Path) -> Path:
    """The dir of a finished 2-step ``cimpt tokenizer train`` run on the shared images."""
    run_dir = tmp_path_factory.mktemp("tokenizer_run")
    with single_thread():
        code = run_cli(
            [
                "tokenizer",
                "train",
                str(TOKENIZER_CONFIG),
                *tiny_tokenizer_overrides(run_dir, image_folder),
            ]
        )
    assert code == 0
    return run_dir
