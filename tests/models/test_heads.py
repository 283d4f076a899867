"""RESPIX and REVDET heads against explicit per-position computations."""

from __future__ import annotations

import torch

from cimpt.models.heads import RespixHead, RevdetHead


def test_respix_head_unpatchify_matches_manual_loop() -> None:
    torch.manual_seed(0)
    dim, p, g = 5, 3, 2
    head = RespixHead(dim, p)
    feats = torch.randn(2, dim, g, g)
    out = head(feats)
    assert out.shape == (2, 3, g * p, g * p)
    w, b = head.proj.weight, head.proj.bias
    for bi in range(2):
        for i in range(g):
            for j in range(g):
                vals = w @ feats[bi, :, i, j] + b  # [3*p*p], ordered (channel, row, column)
                for c in range(3):
                    for r in range(p):
                        for s in range(p):
                            got = out[bi, c, i * p + r, j * p + s]
                            torch.testing.assert_close(got, vals[c * p * p + r * p + s])


def test_revdet_head_is_linear_per_position() -> None:
    torch.manual_seed(1)
    head = RevdetHead(4)
    feats = torch.randn(2, 4, 3, 3)
    out = head(feats)
    assert out.shape == (2, 3, 3)
    want = torch.einsum("bchw,c->bhw", feats, head.proj.weight[0]) + head.proj.bias[0]
    torch.testing.assert_close(out, want)
