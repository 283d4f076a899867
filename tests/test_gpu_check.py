"""bench/gpu_check.py and bench/cpu_precision.py at tiny sizes on the CPU: every section runs
and the records hold what docs/BENCHMARKS.md reads from them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


def test_gpu_check_tiny_on_cpu(tmp_path: Path, e2e) -> None:
    out = tmp_path / "gpu_check.json"
    args = ["--tiny", "--device", "cpu", "--no-compile", "--steps", "2", "--warmup", "1"]
    assert e2e.import_bench("gpu_check").main([*args, "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    for section in ("machine", "peak", "flips", "cim_eager", "supervised_eager", "summary"):
        assert "error" not in rec[section], rec[section]
    # The tokenizer as CIM runs it (fp32 inside autocast) gives exactly the fp32 ids.
    assert rec["flips"]["flip_rate_cim_default"] == 0.0
    assert rec["cim_eager"]["img_per_s"] > 0 and rec["cim_eager"]["gflops_per_image"] > 0
    assert rec["summary"]["cim_over_supervised_eager"] > 0
    assert "skipped" in rec["ddp"]  # no GPUs here


def test_cpu_precision_tiny(tmp_path: Path, e2e) -> None:
    out = tmp_path / "cpu.json"
    args = ["--widths", "32", "--depth", "1", "--batch", "4", "--reps", "1", "--peak-n", "64"]
    args += ["--force-bf16", "--fused-widths", "32"]
    assert e2e.import_bench("cpu_precision").main([*args, "--out", str(out)]) == 0
    rows = {(r["job"], r["dtype"]): r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {
        ("cim", "fp32"),
        ("cim", "bf16"),
        ("finetune", "fp32"),
        ("finetune", "bf16"),
        ("cim", "bf16-fused-attn"),
    }
    assert rows[("cim", "bf16")]["speedup_over_fp32"] > 0
    assert all(r["gflops_per_image"] > 0 and r["mfu"] > 0 for r in rows.values())
