"""Top-k and nucleus truncation of the generator's distribution, against hand computations."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from cimpt.cim import CIM
from cimpt.models.sampling import truncate_logits


def _frequencies(model: CIM, logits: torch.Tensor, n: int = 20_000) -> torch.Tensor:
    """Empirical distribution of ``model.sample`` at one position repeated ``n`` times."""
    v = logits.numel()
    many = logits.expand(1, 1, n, v)
    z = torch.zeros(1, 1, n, dtype=torch.long)
    z_hat = model.sample(many, z, torch.ones(1, 1, n, dtype=torch.bool))
    return torch.bincount(z_hat.flatten(), minlength=v).float() / n


def _sampler(top_k: int = 0, top_p: float = 1.0, temperature: float = 1.0) -> CIM:
    # ``sample`` reads only these three attributes: no tokenizer or network is needed.
    stub = CIM.__new__(CIM)
    stub.__dict__.update(top_k=top_k, top_p=top_p, temperature=temperature)
    return stub


# Probabilities 0.05, 0.5, 0.15, 0.3 at T=1, deliberately not sorted by id.
PROBS = torch.tensor([0.05, 0.5, 0.15, 0.3])
LOGITS = PROBS.log()


def test_top_k_samples_the_renormalized_k_most_likely_ids() -> None:
    torch.manual_seed(0)
    freq = _frequencies(_sampler(top_k=2), LOGITS)
    want = torch.tensor([0.0, 0.5, 0.0, 0.3]) / 0.8
    torch.testing.assert_close(freq, want, atol=0.015, rtol=0)


def test_nucleus_keeps_the_smallest_set_reaching_p() -> None:
    torch.manual_seed(0)
    # Most likely first: 0.5 (id 1), 0.3 (id 3), 0.15 (id 2), 0.05 (id 0). p = 0.7: after
    # id 1 the mass is 0.5 < 0.7, after id 3 it is 0.8 >= 0.7, so ids 1 and 3 stay.
    freq = _frequencies(_sampler(top_p=0.7), LOGITS)
    torch.testing.assert_close(freq, torch.tensor([0.0, 0.5, 0.0, 0.3]) / 0.8, atol=0.015, rtol=0)
    # p = 0.9 needs the third id too (0.8 < 0.9).
    freq = _frequencies(_sampler(top_p=0.9), LOGITS)
    want = torch.tensor([0.0, 0.5, 0.15, 0.3]) / 0.95
    torch.testing.assert_close(freq, want, atol=0.015, rtol=0)


def test_nucleus_is_measured_at_the_sampling_temperature() -> None:
    # At T = 2 the probabilities are proportional to sqrt(PROBS): 0.379 (id 1), 0.294 (id 3),
    # 0.208 (id 2), 0.120 (id 0). The two largest hold 0.673 < 0.7, so the nucleus at p = 0.7
    # needs three ids, where at T = 1 it needed two.
    t = 2.0
    tempered = PROBS.sqrt() / PROBS.sqrt().sum()
    order = tempered.argsort(descending=True)
    before = tempered[order].cumsum(0) - tempered[order]
    keep = torch.zeros(4, dtype=torch.bool)
    keep[order[before < 0.7]] = True
    out = truncate_logits(LOGITS.clone(), top_p=0.7, temperature=t)
    assert torch.equal(torch.isfinite(out), keep)
    assert keep.sum() == 3


def test_zero_and_full_settings_change_nothing_and_argmax_survives() -> None:
    logits = torch.randn(2, 3, 3, 16)
    assert torch.equal(truncate_logits(logits, 0, 1.0), logits)
    assert torch.equal(truncate_logits(logits, 16, 1.0), logits)
    cut = truncate_logits(logits, 3, 0.5)
    assert torch.equal(cut.argmax(-1), logits.argmax(-1))
    assert bool((torch.isfinite(cut).sum(-1) <= 3).all())
    z = torch.zeros(2, 3, 3, dtype=torch.long)
    mask = torch.ones(2, 3, 3, dtype=torch.bool)
    z_hat = _sampler(top_k=3, top_p=0.5, temperature=0.0).sample(logits, z, mask)
    assert torch.equal(z_hat, logits.argmax(-1))


def test_cell_psnr_matches_a_hand_computation(e2e: SimpleNamespace) -> None:
    cp = e2e.import_bench("corruption_plausibility")
    a = torch.zeros(1, 3, 8, 8)
    b = a.clone()
    b[:, :, :4, 4:] = 0.1  # one of the four 4x4 cells differs by 0.1 everywhere: MSE 0.01
    psnr = cp.cell_psnr(a, b, grid=2)
    assert psnr.shape == (1, 2, 2)
    torch.testing.assert_close(psnr[0, 0, 1], torch.tensor(20.0))
    assert bool((psnr[0].flatten()[[0, 2, 3]] == 100.0).all())  # identical: capped at 1e-10


def test_plausibility_bench_on_a_tiny_run(
    pretrained_runs: Callable[[str], Path], image_folder: Path, tmp_path: Path, e2e: SimpleNamespace
) -> None:
    cp = e2e.import_bench("corruption_plausibility")
    out = tmp_path / "p.json"
    args = ["--run", str(pretrained_runs("revdet")), "--data", str(image_folder), "--n", "8"]
    assert cp.main([*args, "--out", str(out)]) == 0
    rows = {r["setting"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {s[0] for s in cp.SETTINGS}
    argmax = rows["argmax (T=0)"]
    # Argmax replaces exactly the masked tokens the generator gets wrong.
    assert argmax["replaced_of_masked"] == pytest.approx(1 - argmax["generator_acc_masked"])
    assert all(0 <= r["close_of_replaced"] <= 1 for r in rows.values())


@pytest.mark.timeout(600)
def test_generator_sweep_quick_measures_each_arm(
    image_folder: Path, tmp_path: Path, e2e: SimpleNamespace
) -> None:
    gs = e2e.import_bench("generator_sweep")
    where = ["--work", str(tmp_path / "w"), "--out", str(tmp_path / "out")]
    data = ["--data", str(image_folder), "--val-data", str(image_folder)]
    args = ["--preset", "quick", *data, *where, "--in-process", "--n", "8"]
    assert gs.main([*args, "--arms", "default,codes256", "--steps", "2"]) == 0
    rows = json.loads((tmp_path / "out" / "generator_sweep.json").read_text())["rows"]
    assert [(r["arm"], r["steps"]) for r in rows] == [("default", 2), ("codes256", 2)]
    # The codebook arm trained a tokenizer of its own, with 256 codes.
    own = load_file(str(tmp_path / "w" / "tokenizer_cim-revdet-codes256" / "tokenizer.safetensors"))
    assert {v.shape[0] for k, v in own.items() if "codebook" in k} == {256}
    for r in rows:
        argmax = r["settings"]["argmax (T=0)"]
        # Argmax replaces exactly the masked tokens the generator gets wrong.
        assert argmax["replaced_of_masked"] == pytest.approx(1 - r["generator_acc_masked"])
        assert r["last"]["step"] == 2 and r["tokenizer"]["psnr"] is not None
    table = (tmp_path / "out" / "generator_sweep.md").read_text()
    assert "| default | 2 |" in table and "| codes256 | 2 |" in table


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--arms", "default,huge"], ("--arms", "huge")),
        (["--steps", "0"], ("--steps",)),
        (["--steps", "abc"], ("--steps", "abc")),
    ],
)
def test_generator_sweep_bad_arguments_are_one_error_line(
    extra: list[str], words: tuple[str, ...], e2e: SimpleNamespace, capsys: pytest.CaptureFixture
) -> None:
    gs = e2e.import_bench("generator_sweep")
    assert gs.main(extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1
    assert all(w in err for w in words)
