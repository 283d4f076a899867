"""The CIM module, with a tiny palette tokenizer built here (the real VQ-VAE is not needed).

The palette tokenizer maps each d x d cell to the nearest of V fixed colours and decodes an id
to a flat cell of that colour, so every expected token and image can be written down by hand.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cimpt.cim_objectives as objectives
from cimpt.build import build_cim
from cimpt.cim import CIM
from cimpt.config import load_config
from cimpt.errors import CimptError
from cimpt.tokenizers.base import ImageTokenizer

V = 16
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class PaletteTokenizer(ImageTokenizer):
    """Nearest-colour tokenizer over ``vocab`` fixed colours, ``downsample`` pixels per token."""

    def __init__(self, vocab: int = V, downsample: int = 4, stride: int | None = None) -> None:
        super().__init__()
        self.vocab_size = vocab
        self.downsample = downsample
        self.stride = stride or downsample  # a wrong stride simulates a lying tokenizer
        g = torch.Generator().manual_seed(123)
        self.codebook = nn.Parameter(torch.rand(vocab, 3, generator=g))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        cells = F.avg_pool2d(x, self.stride).permute(0, 2, 3, 1)  # [B, h, w, 3]
        dist = ((cells.unsqueeze(-2) - self.codebook) ** 2).sum(-1)  # [B, h, w, V]
        return dist.argmin(-1)

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        img = self.codebook[ids].permute(0, 3, 1, 2)  # [B, 3, h, w]
        d = self.downsample
        return img.repeat_interleave(d, dim=2).repeat_interleave(d, dim=3)

    def arch_config(self) -> dict[str, Any]:
        return {"vocab": self.vocab_size, "downsample": self.downsample}


def _cfg(objective: str = "respix", downsample: int = 4, *extra: str):
    return load_config(
        None,
        [
            f"objective={objective}",
            "data.img_size=32",
            "enhancer.patch_size=4",
            "enhancer.drop_path=0.0",
            "enhancer.kwargs={embed_dim: 32, depth: 2, num_heads: 2}",
            f"tokenizer.vocab_size={V}",
            f"tokenizer.downsample={downsample}",
            "generator.embed_dim=32",
            "generator.depth=1",
            "generator.num_heads=2",
            *extra,
        ],
    )


def _model(objective: str = "respix", downsample: int = 4, *extra: str) -> CIM:
    torch.manual_seed(0)
    return build_cim(_cfg(objective, downsample, *extra), PaletteTokenizer(downsample=downsample))


def _palette_image(tok: PaletteTokenizer, ids: torch.Tensor, d: int) -> torch.Tensor:
    """Hand-written decode: each id becomes a d x d block of its colour. ``[B, 3, g*d, g*d]``."""
    b, g, _ = ids.shape
    out = torch.empty(b, 3, g * d, g * d)
    for bi in range(b):
        for i in range(g):
            for j in range(g):
                out[bi, :, i * d : (i + 1) * d, j * d : (j + 1) * d] = (
                    tok.codebook[ids[bi, i, j]].detach().view(3, 1, 1)
                )
    return out


def _batch(model: CIM, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, Any]:
    """x_tok is the palette image of ``ids`` (so encode(x_tok) == ids); x is a noisy copy at R."""
    tok = model.tokenizer
    x_tok = _palette_image(tok, ids, tok.downsample)
    x01 = F.interpolate(x_tok, size=(32, 32), mode="nearest")
    x01 = (x01 + 0.05 * torch.randn_like(x01)).clamp(0, 1)
    return {
        "x": (x01 - MEAN) / STD,
        "x_tok": x_tok,
        "mask": mask,
        "label": torch.zeros(ids.shape[0], dtype=torch.long),
        "skipped": 0,
    }


def _random_batch(model: CIM, b: int = 2, seed: int = 0) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (b, 8, 8), generator=g)
    mask = torch.rand(b, 8, 8, generator=g) < 0.45
    return _batch(model, ids, mask)


@pytest.mark.parametrize("objective", ["respix", "revdet"])
@pytest.mark.parametrize("downsample", [2, 4])
def test_forward_backward_finite_for_both_networks(objective: str, downsample: int) -> None:
    model = _model(objective, downsample).train()
    out = model(_random_batch(model))
    expected = {"loss", "gen_loss", "enh_loss", "gen_acc", "replaced", "replaced_masked"}
    revdet = {"revdet_acc", "revdet_pos", "revdet_prior_acc", "revdet_margin"}
    expected |= {"respix_loss", "respix_vs_zero"} if objective == "respix" else revdet
    assert set(out) == expected
    for k, v in out.items():
        assert isinstance(v, torch.Tensor) and v.dim() == 0 and torch.isfinite(v), k
    torch.testing.assert_close(out["loss"], out["gen_loss"] + out["enh_loss"])
    out["loss"].backward()
    for part in (model.generator, model.enhancer, model.head):
        for name, p in part.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.generator.mask_token.grad.abs().sum() > 0
    assert model.head.proj.weight.grad.abs().sum() > 0


def test_enh_weight_scales_the_enhancer_term() -> None:
    model = _model("respix", 4, "loss.enh_weight=0.25")
    torch.manual_seed(1)
    out = model(_random_batch(model))
    torch.testing.assert_close(out["loss"], out["gen_loss"] + 0.25 * out["enh_loss"])


@pytest.mark.parametrize("objective", ["respix", "revdet"])
def test_no_gradient_crosses_between_generator_and_enhancer(objective: str) -> None:
    model = _model(objective).train()
    s = model._pipeline(_random_batch(model))
    enh_loss, _ = model.head.loss(s)
    enh_loss.backward(retain_graph=True)
    assert all(p.grad is None for p in model.generator.parameters())
    assert all(p.grad is not None for p in model.enhancer.parameters())
    model.zero_grad(set_to_none=True)
    s.gen_loss.backward()
    assert all(p.grad is None for p in model.enhancer.parameters())
    assert all(p.grad is None for p in model.head.parameters())
    assert all(p.grad is not None for p in model.generator.parameters())


def test_corrupted_image_decodes_the_whole_grid() -> None:
    model = _model("respix", 4)
    batch = _random_batch(model)
    batch["mask"] = torch.zeros(2, 8, 8, dtype=torch.bool)
    z = model.golden_tokens(batch["x_tok"])
    logits, _, _ = model.generator_step(batch["x"], batch["mask"], z)
    z_hat = model.sample(logits, z, batch["mask"])
    assert torch.equal(z_hat, z)  # nothing masked, nothing sampled
    x_cor = model.corrupt(z_hat)
    want = (_palette_image(model.tokenizer, z, 4) - MEAN) / STD
    torch.testing.assert_close(x_cor, want)
    assert not torch.allclose(x_cor, batch["x"], atol=1e-2)  # reconstruction, not the input


def test_corrupt_resizes_a_smaller_tokenizer_view() -> None:
    model = _model("respix", 2)  # 16 px tokenizer view, 32 px enhancer view
    z = torch.randint(0, V, (2, 8, 8))
    z[:, 2:5, 2:5] = z[:, 3:4, 3:4]  # a flat 3x3-token area: bicubic is exact at its centre
    x_cor = model.corrupt(z)
    assert x_cor.shape == (2, 3, 32, 32)
    img = x_cor * STD + MEAN
    assert img.min() >= -1e-6 and img.max() <= 1 + 1e-6
    want = model.tokenizer.codebook[z[:, 3, 3]].detach().view(2, 3, 1, 1).expand(2, 3, 4, 4)
    torch.testing.assert_close(img[:, :, 12:16, 12:16], want, atol=1e-5, rtol=0)


def test_sample_keeps_unmasked_and_temperature_zero_is_argmax() -> None:
    model = _model()
    torch.manual_seed(0)
    logits = torch.randn(3, 8, 8, V)
    z = torch.randint(0, V, (3, 8, 8))
    mask = torch.rand(3, 8, 8) < 0.5
    for t in (0.0, 1e-8):
        model.temperature = t
        z_hat = model.sample(logits, z, mask)
        assert torch.equal(z_hat[~mask], z[~mask])
        assert torch.equal(z_hat[mask], logits.argmax(-1)[mask])
    model.temperature = 1.0
    z_hat = model.sample(logits, z, mask)
    assert torch.equal(z_hat[~mask], z[~mask])


def test_sample_frequencies_follow_tempered_softmax() -> None:
    model = _model()
    model.temperature = 2.0
    torch.manual_seed(0)
    logits = torch.tensor([0.0, 1.0, 2.0]).expand(1, 100, 100, 3)
    mask = torch.ones(1, 100, 100, dtype=torch.bool)
    z_hat = model.sample(logits, torch.zeros(1, 100, 100, dtype=torch.long), mask)
    freq = torch.bincount(z_hat.flatten(), minlength=3).float() / 10_000
    e = torch.exp(torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(freq, e / e.sum(), atol=0.02, rtol=0)


def _peaked(model: CIM, token: int) -> None:
    """Generator that always predicts ``token`` (zero head weights, one large bias)."""
    with torch.no_grad():
        model.generator.head.weight.zero_()
        model.generator.head.bias.zero_()
        model.generator.head.bias[token] = 10.0


def test_revdet_labels_and_replaced_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model("revdet")
    model.temperature = 0.0
    c = 5
    _peaked(model, c)
    g = torch.Generator().manual_seed(3)
    ids = torch.where(
        torch.rand(2, 8, 8, generator=g) < 0.5, c, torch.randint(0, V, (2, 8, 8), generator=g)
    )
    mask = torch.rand(2, 8, 8, generator=g) < 0.5
    batch = _batch(model, ids, mask)
    seen: dict[str, torch.Tensor] = {}
    real = objectives.revdet_loss

    def spy(logits: torch.Tensor, labels: torch.Tensor):  # type: ignore[no-untyped-def]
        seen["labels"] = labels
        return real(logits, labels)

    monkeypatch.setattr(objectives, "revdet_loss", spy)
    out = model(batch)
    # Hand count: masked positions whose golden token is not c are replaced; masked positions
    # that already were c got the same id back and count as not replaced.
    changed = torch.zeros(2, 8, 8, dtype=torch.bool)
    for b in range(2):
        for i in range(8):
            for j in range(8):
                changed[b, i, j] = bool(mask[b, i, j]) and int(ids[b, i, j]) != c
    assert (mask & (ids == c)).any()  # the "sampled == original" case occurs
    assert torch.equal(seen["labels"], changed)
    assert out["replaced"].item() == pytest.approx(changed.sum().item() / 128)
    assert out["replaced_masked"].item() == pytest.approx(changed.sum().item() / mask.sum().item())
    assert out["revdet_pos"].item() == pytest.approx(out["replaced"].item())
    # Generator loss by hand: constant logits (bias) at every position.
    bias = model.generator.head.bias.detach()
    ce = torch.logsumexp(bias, 0) - bias[ids[mask]]
    assert out["gen_loss"].item() == pytest.approx(ce.mean().item(), rel=1e-4)
    assert out["gen_acc"].item() == pytest.approx((ids[mask] == c).float().mean().item())


def test_respix_target_default_window_and_residual() -> None:
    model = _model("respix").eval()
    assert model.head.window == 4  # 0 in the config means the patch size
    assert _model("respix", 4, "loss.respix_window=3").head.window == 3
    batch = _random_batch(model)
    s = model._pipeline(batch)
    target = objectives.sliding_window_normalize(batch["x"], 4)
    _, metrics = model.head.loss(s)
    want = ((s.out - target) ** 2).mean()
    assert metrics["respix_loss"].item() == pytest.approx(want.item(), rel=1e-5)

    res = _model("respix", 4, "loss.respix_residual=true").eval()
    s = res._pipeline(batch)
    _, metrics = res.head.loss(s)
    want = ((s.out - (batch["x"] - s.x_cor)) ** 2).mean()
    assert metrics["respix_loss"].item() == pytest.approx(want.item(), rel=1e-5)


def test_tokenizer_is_not_a_submodule_but_moves_with_the_model() -> None:
    model = _model()
    keys = set(model.state_dict())
    assert not any("codebook" in k or k.startswith("tokenizer") for k in keys)
    assert all(p is not model.tokenizer.codebook for p in model.parameters())
    assert "mean" not in keys  # config-derived buffers are not checkpointed
    model.train()
    assert not model.tokenizer.training
    assert not model.tokenizer.codebook.requires_grad
    model.to(torch.float64)
    assert model.tokenizer.codebook.dtype == torch.float64
    assert model.generator.pos_embed.dtype == torch.float64


def test_no_weight_decay_names() -> None:
    model = _model()
    names = model.no_weight_decay()
    params = {n for n, _ in model.named_parameters()}
    assert names <= params
    assert {
        "generator.pos_embed",
        "generator.cls_token",
        "generator.mask_token",
        "enhancer.backbone.pos_embed",
        "enhancer.backbone.cls_token",
    } <= names


def test_grid_and_vocab_mismatches_are_clear_errors() -> None:
    # The config derives a 16 px tokenizer view (8 x downsample 2); a 4x tokenizer gives 4x4.
    with pytest.raises(CimptError, match=r"^token grid 4x4 != enhancer patch grid 8x8: "):
        build_cim(_cfg("respix", 2), PaletteTokenizer(downsample=4))
    with pytest.raises(CimptError, match=r"^tokenizer.vocab_size: .* 16 ids .* has 32$"):
        build_cim(_cfg(), PaletteTokenizer(vocab=32))
    # A tokenizer whose real stride differs from its declared downsample is caught by a probe.
    with pytest.raises(CimptError, match="downsample attribute"):
        build_cim(_cfg(), PaletteTokenizer(downsample=4, stride=8))


def test_mask_grid_mismatch_in_a_batch_is_a_clear_error() -> None:
    model = _model()
    batch = _random_batch(model)
    batch["mask"] = torch.zeros(2, 4, 4, dtype=torch.bool)
    with pytest.raises(CimptError, match="token grid"):
        model(batch)


@pytest.mark.parametrize("objective", ["respix", "revdet"])
def test_visualize(objective: str) -> None:
    model = _model(objective).train()
    if objective == "revdet":
        model.temperature = 0.0
        _peaked(model, 5)
    batch = _random_batch(model)
    vis = model.visualize(batch)
    assert model.training  # mode restored
    z = model.tokenizer.encode(batch["x_tok"])
    torch.testing.assert_close(vis["recon"], _palette_image(model.tokenizer, z, 4))
    torch.testing.assert_close(vis["original"], (batch["x"] * STD + MEAN).clamp(0, 1))
    assert torch.equal(vis["mask"], batch["mask"])
    for k in ("original", "recon", "corrupted"):
        assert vis[k].shape == (2, 3, 32, 32) and vis[k].min() >= 0 and vis[k].max() <= 1
    if objective == "respix":
        for k in ("prediction", "target_norm", "prediction_norm"):
            p = vis[k]
            assert p.shape == (2, 3, 32, 32) and p.min() >= 0 and p.max() <= 1
    else:
        assert vis["prob"].shape == (2, 8, 8)
        assert ((vis["prob"] > 0) & (vis["prob"] < 1)).all()
        assert torch.equal(vis["replaced"], batch["mask"] & (z != 5))
    assert all(not v.requires_grad and v.device.type == "cpu" for v in vis.values())


def test_position_prior_scores_each_batch_before_learning_from_it() -> None:
    model = _model("revdet").train()
    g = model.enhancer.grid
    labels = torch.zeros(4, g, g, dtype=torch.bool)
    labels[:, 0, 0] = True  # only the corner cell is ever replaced
    # Nothing seen yet: the prior says "not replaced" everywhere, wrong only at the corner.
    prior = model.head.prior_accuracy
    assert prior(labels).item() == pytest.approx(1 - 1 / g**2)
    # It has now seen the corner replaced in every image: right everywhere.
    assert prior(labels).item() == 1.0
    model.eval()  # evaluation (figures) scores without counting
    before = model.head.prior_seen.clone()
    prior(~labels)
    assert torch.equal(model.head.prior_seen, before)


def test_respix_figure_and_score_show_only_what_the_model_predicts() -> None:
    model = _model("respix").eval()
    model.temperature = 0.0
    _peaked(model, 5)  # the corrupted image depends on x_tok only
    with torch.no_grad():
        model.head.proj.weight.zero_()
        model.head.proj.bias.zero_()
    batch = _random_batch(model)
    other = {**batch, "x": batch["x"] + torch.randn_like(batch["x"])}  # another answer
    a, b = model.visualize(batch), model.visualize(other)
    # A zero prediction renders the same whatever the original: nothing of it leaks in.
    torch.testing.assert_close(a["prediction"], b["prediction"])
    torch.testing.assert_close(a["prediction_norm"], torch.full_like(a["prediction_norm"], 0.5))
    assert not torch.allclose(a["target_norm"], b["target_norm"])
    # respix_vs_zero is the loss over a zero prediction's: exactly 1 for a zero prediction.
    out = model(batch)
    torch.testing.assert_close(out["respix_vs_zero"], torch.tensor(1.0))
