"""CIM under DDP: two gloo processes on CPU end with identical generator and enhancer weights,
and the frozen tokenizer is never part of the DDP module."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from cimpt.tokenizers.load import save_tokenizer
from cimpt.tokenizers.vqvae import VQVAE

_WORKER = """
import os, sys, torch
from cimpt.config import load_config
from cimpt.engine.loop import Trainer
from cimpt.pretrain import build_cim_task
cfg = load_config(None, sys.argv[2:])
task = build_cim_task(cfg)
trainer = Trainer(task, cfg)
ddp_params = {{id(p) for p in trainer.wrapped.parameters()}}
tok_params = [p for p in task.model.tokenizer.parameters()]
result = trainer.fit()
torch.save({{"steps": result.state.step, "weights": task.model.state_dict(),
            "tokenizer_in_ddp": any(id(p) in ddp_params for p in tok_params),
            "ddp": type(trainer.wrapped).__name__}},
           os.path.join({out!r}, f"rank{{os.environ['RANK']}}.pt"))
from cimpt.engine.distributed import cleanup
cleanup()  # as the CLI does: no gloo group left alive at exit
"""


def _images(root: Path, n: int = 16) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        yy, xx = np.mgrid[0:32, 0:32]
        img = np.stack([(xx * (i + 1)) % 256, (yy * 3 + i * 9) % 256, (xx + yy) * 4 % 256], -1)
        img = (img + rng.integers(0, 20, img.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / f"{i:03d}.png")


def test_two_process_cim_ranks_identical(tmp_path: Path, e2e: SimpleNamespace) -> None:
    data = tmp_path / "imgs"
    data.mkdir()
    _images(data)
    torch.manual_seed(0)
    tok_file = save_tokenizer(VQVAE(16, 4, 8, 1, 8), tmp_path / "tok.safetensors")
    run = tmp_path / "run"
    overrides = [
        f"run.dir={run}",
        f"data.path={data}",
        f"tokenizer.checkpoint={tok_file}",
        "tokenizer.vocab_size=16",
        "enhancer.kwargs={embed_dim: 32, depth: 1, num_heads: 2}",
        "generator.depth=1",
        "generator.embed_dim=32",
        "generator.num_heads=2",
        "train.batch_size=8",
        "train.max_steps=3",
        "data.num_workers=0",
        "run.progress=false",
        "run.tensorboard=false",
        "run.vis_every=0",
        "run.ckpt_every=100",
        "objective=revdet",
    ]
    script = tmp_path / "worker.py"
    script.write_text(_WORKER.format(out=str(tmp_path)))
    e2e.run_two_ranks([str(script), "x", *overrides])
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["steps"] == r1["steps"] == 3
    assert r0["ddp"] == "DistributedDataParallel" and not r0["tokenizer_in_ddp"]
    torch.manual_seed(0)
    for k, v in r0["weights"].items():
        assert torch.equal(v, r1["weights"][k]), k
    # Rank 0 alone wrote the checkpoint, without tokenizer weights.
    from cimpt.engine.checkpoint import latest_checkpoint, load_tensors

    ckpt = latest_checkpoint(run)
    assert ckpt is not None and ckpt.name == "step_00000003"
    keys = load_tensors(ckpt).keys()
    assert not any(k.startswith("tokenizer") for k in keys)
