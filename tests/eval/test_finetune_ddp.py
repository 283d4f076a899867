"""Fine-tuning under DDP (two gloo processes on CPU): identical weights on both ranks, and
the sharded evaluation counts every held-out image exactly once (11 images: shards of 6
and 5, no padding), so its top-1 equals a single-process evaluation of the same weights."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cimpt.config import CONFIG_DIR, load_config, typed
from cimpt.eval.accuracy import evaluate_classifier
from cimpt.eval.augment import build_finetune_transforms
from cimpt.eval.classifier import Classifier, classifier_args
from cimpt.eval.labelled import labelled_split
from cimpt.export import timm_args

CONFIG = CONFIG_DIR / "cifar10_finetune.yaml"

_WORKER = """
import os, sys, torch
from cimpt.config import load_config
from cimpt.engine.loop import Trainer
from cimpt.eval.finetune import build_finetune_task
cfg = load_config(sys.argv[1], sys.argv[2:])
task = build_finetune_task(cfg)
trainer = Trainer(task, cfg)
trainer.fit()
torch.save({{"last": task.last, "weights": task.sup.net.state_dict(),
            "ddp": type(trainer.wrapped).__name__}},
           os.path.join({out!r}, f"rank{{os.environ['RANK']}}.pt"))
from cimpt.engine.distributed import cleanup
cleanup()  # as the CLI does: no gloo group left alive at exit
"""


def test_two_process_finetune_evaluates_exactly(
    tmp_path: Path, image_folder: Path, e2e: SimpleNamespace
) -> None:
    val = tmp_path / "val"
    for c, name in enumerate(("cats", "dogs")):
        (val / name).mkdir(parents=True)
        for i in range(6 if c == 0 else 5):
            e2e.structured_image(70_000 + 100 * c + i).save(val / name / f"{i}.png")
    overrides = [
        f"run.dir={tmp_path / 'run'}",
        f"data.path={image_folder}",
        f"data.val_path={val}",
        "enhancer.kwargs={embed_dim: 32, depth: 1, num_heads: 2}",
        "train.batch_size=8",
        "train.max_steps=3",
        "data.num_workers=0",
        "run.progress=false",
        "run.tensorboard=false",
        "eval.batch_size=4",
    ]
    script = tmp_path / "worker.py"
    script.write_text(_WORKER.format(out=str(tmp_path)))
    e2e.run_two_ranks([str(script), str(CONFIG), *overrides])
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["ddp"] == "DistributedDataParallel"
    for k, v in r0["weights"].items():
        assert torch.equal(v, r1["weights"][k]), k
    assert r0["last"] == r1["last"]

    # Single process, same weights, all 11 images.
    cfg = typed(load_config(CONFIG, overrides))
    net = Classifier(classifier_args(timm_args(cfg), 2, 0.0, "avg"))
    net.load_state_dict(r0["weights"])
    _, view = build_finetune_transforms(cfg.data, cfg.finetune)
    ds, _ = labelled_split(cfg, "val", view)
    single = evaluate_classifier(net, ds, 4, 0, torch.device("cpu"))
    assert r0["last"]["top1"] == single["val_top1"]
    hits = single["val_top1"] * 11 / 100
    assert hits == pytest.approx(round(hits))  # a count of the 11 images, each once
