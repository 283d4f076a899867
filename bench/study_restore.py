"""Carry a method study to a machine that lost its work directory (``compare_methods --restore``).

A study's work directory (tokenizers, encoders, evaluation runs: hundreds of MB) is not
committed, but its published table (``docs/results/<table>.json``) is, and it holds every
number the work directory produced. A reset cloud instance or a fresh session restores from it:

1. **Calibration.** The seconds per step of every arm (and of each tokenizer, from the charge
   it was given) are rebuilt from the published budgets, so every arm gets exactly the
   published step count again; nothing is re-timed.
2. **Encoders.** Pre-training re-runs with the same configs, seeds and step counts. The engine
   is deterministic on one machine type and library stack, so the re-created encoder should be
   the published one; each is checked against the table (its SHA-256 when the table has one,
   else its last logged losses) and the result is recorded beside it. A mismatch is reported,
   not hidden: evaluations of a different encoder are not pairs of the published ones.
3. **Evaluations** the table already holds are kept, not re-run, for scratch (no encoder:
   its runs depend only on code, data and seed) and for every arm whose re-created encoder
   is the published one. An arm whose encoder differs (another machine type, library
   version or code) is evaluated again, all of it, so that each arm's numbers come from one
   encoder; its published evaluations stay beside the record as ``published_eval``.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch

#: Logged losses compared when the published table has no encoder hash.
LOSS_KEYS = ("loss", "gen_loss", "enh_loss", "mae_loss", "simmim_loss", "beit_loss")


def load_published(path: str | Path, option: str = "--restore") -> dict[str, Any]:
    """The published table ``{"meta": ..., "methods": [record, ...]}``; one clear error, naming
    the command-line ``option`` that gave the path, when the file is missing or not such a
    table."""
    p = Path(path)
    try:
        payload = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{option}: cannot read {p} ({e})") from None
    records = payload.get("methods") if isinstance(payload, dict) else None
    if not isinstance(records, list) or not all("method" in r for r in records):
        raise ValueError(f"{option}: {p} is not a study table written by compare_methods")
    return payload


def by_method(payload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["method"]: r for r in payload["methods"]}


def restored_calibration(
    published: dict[str, dict[str, Any]], tokenizer_of: dict[str, str], tok_steps: int
) -> dict[str, float]:
    """Seconds per step that give every published arm its published budget again.

    Args:
        published: method name -> published record (``pretrain`` holds ``s_per_step`` and
            ``tokenizer_charge_s``).
        tokenizer_of: method name -> the calibration key of the tokenizer charged to it
            (only arms that pay for one).
        tok_steps: the tokenizer runs' step count (the charge is ``tok_steps x s_per_step``).
    """
    calib: dict[str, float] = {}
    for name, rec in published.items():
        pre = rec.get("pretrain") or {}
        if "s_per_step" not in pre:
            continue  # scratch
        calib[name] = float(pre["s_per_step"])
        if name in tokenizer_of and pre.get("tokenizer_charge_s"):
            calib[tokenizer_of[name]] = float(pre["tokenizer_charge_s"]) / tok_steps
    return calib


def write_calibration(work: Path, calib: dict[str, float], source: str | Path) -> Path:
    """``<work>/calibration.json`` from a restored calibration (the caller keeps an existing
    one instead)."""
    path = work / "calibration.json"
    record = {"s_per_step": calib, "restored_from": str(source), "samples": {}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def tensors_sha256(path: Path) -> str:
    """SHA-256 of a safetensors file's tensors (names, dtypes, shapes, bytes; sorted by name).

    Not of the file: its metadata holds the run's config, whose ``run.dir`` differs between
    a study and its restored copy."""
    from safetensors.torch import load_file

    h = hashlib.sha256()
    for name, t in sorted(load_file(str(path)).items()):
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def compare_recreated(new: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
    """Is the re-created encoder (pre-training record ``new``) the published one (``old``)?

    Compares the encoder files' SHA-256 when both records have one, else the last logged
    losses (all of ``LOSS_KEYS`` both have, exactly: a deterministic re-run repeats them to
    the last bit). Returns ``{"same": bool, "by": "sha256"|"last losses", ...}``.
    """
    if new.get("steps") != old.get("steps"):
        return {"same": False, "by": "steps", "steps": new.get("steps"), "was": old.get("steps")}
    if new.get("encoder_sha256") and old.get("encoder_sha256"):
        return {"same": new["encoder_sha256"] == old["encoder_sha256"], "by": "sha256"}
    a, b = new.get("last") or {}, old.get("last") or {}
    keys = [k for k in LOSS_KEYS if k in a and k in b]
    diffs = {k: a[k] - b[k] for k in keys}
    same = bool(keys) and all(d == 0 for d in diffs.values())
    worst = max((abs(d) / max(abs(b[k]), 1e-12) for k, d in diffs.items()), default=math.nan)
    return {"same": same, "by": "last losses", "losses": keys, "max_rel_diff": worst}


def kept_evaluations(old: dict[str, Any] | None) -> dict[str, Any]:
    """The published evaluations of one arm that finished (a result), to keep as they are."""
    evals = (old or {}).get("eval") or {}
    return {k: v for k, v in evals.items() if (v or {}).get("result") is not None}


def differs(rec: dict[str, Any]) -> bool:
    """Whether ``--restore`` found this arm's re-created encoder not to be the published one
    (scratch and arms the table lacks were not checked: they do not differ)."""
    return not ((rec.get("pretrain") or {}).get("recreated") or {"same": True})["same"]


def adopt_published(records: list[dict[str, Any]], published: dict[str, dict[str, Any]]) -> bool:
    """Check each re-created encoder of ``records`` against ``published`` (into
    ``pretrain["recreated"]``), then keep the published evaluations of every arm whose
    encoder is the published one, and of scratch (module doc, item 3). Returns whether every
    arm's were kept."""
    same_all = True
    for rec in records:
        old = published.get(rec["method"]) or {}
        if old.get("pretrain") and rec["pretrain"]:
            rec["pretrain"]["recreated"] = compare_recreated(rec["pretrain"], old["pretrain"])
        kept = kept_evaluations(old)
        if not differs(rec):
            rec["eval"].update(kept)
        elif kept:
            rec["published_eval"] = kept
            same_all = False
            print(
                f"[methods] --restore: {rec['method']}: the re-created encoder differs from "
                "the published one; evaluated again (published ones kept as published_eval)",
                flush=True,
            )
    return same_all


def recreated_note(records: list[dict[str, Any]]) -> list[str]:
    """Table lines naming arms whose re-created encoder differs from the published one."""
    bad = []
    for r in filter(differs, records):
        check = r["pretrain"]["recreated"]
        worst = check.get("max_rel_diff")
        detail = "" if worst is None else f", max relative loss difference {worst:.1e}"
        bad.append(f"{r['method']} ({check['by']}{detail})")
    if not bad:
        return []
    return [
        "",
        "Re-created encoders that differ from the published ones (`--restore`): "
        + "; ".join(bad)
        + ". Every evaluation of these arms in this table is of the re-created encoder "
        "(the published ones are under `published_eval` in the JSON).",
    ]
