"""The small BEiT generator: shapes, [MASK] substitution, init, weight-decay names."""

from __future__ import annotations

import pytest
import torch

from cimpt.models.generator import BEiTGenerator


def _tiny(vocab: int = 11) -> BEiTGenerator:
    torch.manual_seed(0)
    return BEiTGenerator(
        img_size=16,
        patch_size=4,
        vocab_size=vocab,
        embed_dim=16,
        depth=2,
        num_heads=2,
        mlp_ratio=2.0,
    ).eval()


def test_logits_shape() -> None:
    gen = _tiny()
    out = gen(torch.randn(3, 3, 16, 16), torch.zeros(3, 4, 4, dtype=torch.bool))
    assert out.shape == (3, 4, 4, 11)
    assert torch.isfinite(out).all()


def test_masked_patch_embedding_is_mask_token_plus_position() -> None:
    gen = _tiny()
    x = torch.randn(1, 3, 16, 16)
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 1, 2] = True
    tokens = gen.embed(x, mask)  # [1, 17, D]
    n = 1 + 1 * 4 + 2  # +1 for [CLS]
    torch.testing.assert_close(tokens[0, n], gen.mask_token[0, 0] + gen.pos_embed[0, n])
    # An unmasked position keeps its own patch projection (conv on that 4x4 patch).
    patch = x[:, :, 0:4, 4:8]
    proj = (gen.patch_embed.proj.weight * patch).sum(dim=(1, 2, 3)) + gen.patch_embed.proj.bias
    torch.testing.assert_close(tokens[0, 1 + 1], proj + gen.pos_embed[0, 2], rtol=1e-5, atol=1e-5)


def test_masked_pixels_do_not_reach_the_output() -> None:
    gen = _tiny()
    x = torch.randn(1, 3, 16, 16)
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 0, 0] = True
    y = x.clone()
    y[:, :, 0:4, 0:4] = torch.randn(1, 3, 4, 4) * 5  # change only the masked patch
    torch.testing.assert_close(gen(x, mask), gen(y, mask))
    z = x.clone()
    z[:, :, 8:12, 8:12] += 3.0  # change an unmasked patch
    assert not torch.allclose(gen(x, mask), gen(z, mask))
    # Fully masked: the image is invisible.
    full = torch.ones(1, 4, 4, dtype=torch.bool)
    torch.testing.assert_close(gen(x, full), gen(torch.randn(1, 3, 16, 16), full))


def test_init_and_no_weight_decay() -> None:
    gen = BEiTGenerator(32, 4, 100, 64, 1, 4, 4.0)
    names = dict(gen.named_parameters())
    assert gen.no_weight_decay() <= set(names)
    assert {"pos_embed", "cls_token", "mask_token"} == gen.no_weight_decay()
    # truncated normal, std 0.02, cut at +-2 (timm's absolute bounds)
    w = gen.head.weight
    assert 0.015 < w.std().item() < 0.025 and w.abs().max().item() <= 2.0
    assert torch.all(gen.head.bias == 0)
    assert 0.01 < gen.pos_embed.std().item() < 0.03


def test_drop_path_rates_increase_linearly() -> None:
    gen = BEiTGenerator(16, 4, 5, 16, 3, 2, 2.0, drop_path=0.2)
    rates = [getattr(b.drop_path1, "drop_prob", 0.0) for b in gen.blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2])
