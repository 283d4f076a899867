"""bench/method_parts.py: the timed pieces of an MAE, SimMIM and BEiT step together do exactly
the full step's arithmetic, and the script writes its table."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")


def test_parts_add_up_to_the_full_steps_gradients(
    image_folder: Path, tmp_path: Path, e2e: SimpleNamespace
) -> None:
    mp = e2e.import_bench("method_parts")
    cm = mp.cm
    # No stochastic depth, so two forward passes of the same batch are the same computation.
    preset = dataclasses.replace(
        cm.PRESETS["quick"], extra=(*cm.QUICK_EXTRA, "enhancer.drop_path=0.0")
    )
    s = cm.Study(image_folder, image_folder, tmp_path, preset, 0, 1)
    methods = [m for m in cm.METHODS if m.name in ("mae", "simmim", "beit")]
    built = mp.build_trainers(s, methods, tmp_path)
    assert set(built) == {"mae", "simmim", "beit"}
    for name, (trainer, batch) in built.items():
        model = trainer.model
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        # Independent reference: one ordinary forward + backward of the whole model.
        model.zero_grad(set_to_none=True)
        trainer.forward_backward(trainer.to_device(batch), sync=True)
        want = {n: p.grad.clone() for n, p in params if p.grad is not None}
        parts = mp.method_parts(trainer, batch)
        assert list(parts)[-2:] == ["optimizer", "full"]
        pieces = [k for k in parts if k not in ("optimizer", "full")]
        assert {"encoder", "head + loss"} <= set(pieces), name
        model.zero_grad(set_to_none=True)
        for k in pieces:
            parts[k].run()  # accumulate, no clearing between pieces
        got = {n: p.grad for n, p in params if p.grad is not None}
        assert set(got) == set(want), name
        for n in want:
            assert torch.allclose(got[n], want[n], rtol=1e-4, atol=1e-6), f"{name}: {n}"
        trainer.close()
        trainer.logger.close()


def test_main_writes_every_methods_parts(
    image_folder: Path, tmp_path: Path, e2e: SimpleNamespace
) -> None:
    mp = e2e.import_bench("method_parts")
    out = tmp_path / "parts.json"
    args = ["--preset", "quick", "--data", str(image_folder), "--reps", "1", "--warmup", "0",
            "--methods", "mae,cim-revdet", "--out", str(out)]  # fmt: skip
    assert mp.main(args) == 0
    rec = json.loads(out.read_text())["methods"]
    assert set(rec) == {"mae", "cim-revdet"}
    assert set(rec["cim-revdet"]["ms_per_step"]) >= {"generator", "sample", "full"}
    for r in rec.values():
        assert r["glue"] > 0 and r["ms_per_step"]["full"] > 0
    assert mp.main([*args[:-4], "--methods", "scratch", "--out", str(out)]) == 2
