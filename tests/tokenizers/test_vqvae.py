"""Tests of the VQ-VAE tokenizer and its EMA codebook (cimpt.tokenizers.vqvae)."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import distributed as dist

from cimpt.errors import CimptError
from cimpt.tokenizers.vqvae import VQVAE, EMACodebook, chroma_weighted_mse


def tiny(**kw) -> VQVAE:
    args = dict(
        vocab_size=16,
        downsample=4,
        width=16,
        res_blocks=1,
        embed_dim=4,
        ema_decay=0.9,
        commitment=0.25,
        dead_code_threshold=0.01,
    )
    args.update(kw)
    return VQVAE(**args)


def smooth_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Images ``[n, 3, size, size]`` in [0, 1] made of a few colour blocks (easy to learn)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 2, 2, generator=g)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


@pytest.mark.parametrize("downsample", [2, 4, 8])
def test_shapes_and_id_range(downsample: int) -> None:
    torch.manual_seed(0)
    tok = tiny(downsample=downsample)
    x = torch.rand(2, 3, 16, 24)
    out = tok(x)
    assert set(out) == {"loss", "recon_loss", "commit_loss", "psnr", "perplexity", "usage"}
    assert all(v.ndim == 0 for v in out.values())
    tok.eval()
    with torch.no_grad():
        ids = tok.encode(x)
        img = tok.decode(ids)
    assert ids.shape == (2, 16 // downsample, 24 // downsample)
    assert ids.dtype == torch.int64
    assert int(ids.min()) >= 0 and int(ids.max()) < 16
    assert img.shape == (2, 3, 16, 24)
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    assert tok.arch_config()["kind"] == "vqvae"
    assert tok.arch_config()["downsample"] == downsample


def test_indivisible_input_is_an_error() -> None:
    tok = tiny(downsample=4)
    with pytest.raises(CimptError, match=r"18x16 is not divisible by tokenizer.downsample=4"):
        tok.encode(torch.rand(1, 3, 18, 16))
    with pytest.raises(CimptError, match="power of two"):
        tiny(downsample=3)


def test_decode_encode_matches_forward_reconstruction() -> None:
    torch.manual_seed(0)
    tok = tiny()
    tok(smooth_images(8, 16))  # one training step so the codebook is data-initialized
    tok.eval()
    x = smooth_images(4, 16, seed=1)
    with torch.no_grad():
        out = tok(x)
        recon = tok.decode(tok.encode(x))
        z_e = tok.encoder(x)
        codes = tok.codebook.embedding[tok.encode(x)].permute(0, 3, 1, 2)
    # Independent recomputation of every scalar from the encode/decode path.
    mse = ((recon - x) ** 2).mean()
    assert torch.allclose(out["recon_loss"], mse, atol=1e-7)
    per_image = [10 * math.log10(1 / float(((recon[i] - x[i]) ** 2).mean())) for i in range(4)]
    assert float(out["psnr"]) == pytest.approx(sum(per_image) / 4, rel=1e-5)
    commit = ((z_e - codes) ** 2).mean()
    assert torch.allclose(out["commit_loss"], commit, atol=1e-7)
    assert torch.allclose(out["loss"], mse + 0.25 * commit, atol=1e-6)


def test_nearest_and_ema_update_match_numpy_loops() -> None:
    decay, eps = 0.9, 1e-5
    cb = EMACodebook(vocab_size=4, embed_dim=2, decay=decay, dead_code_threshold=0.0)
    emb = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]], dtype=np.float32)
    size = np.array([2.0, 1.0, 0.5, 3.0], dtype=np.float32)
    esum = emb * size[:, None]
    cb.embedding.copy_(torch.from_numpy(emb))
    cb.cluster_size.copy_(torch.from_numpy(size))
    cb.embed_sum.copy_(torch.from_numpy(esum))
    z = np.array([[0.1, 0.2], [0.9, 0.1], [1.2, -0.1], [0.2, 0.8], [-0.3, 0.1]], np.float32)

    ids = cb.nearest(torch.from_numpy(z)).numpy()
    expected_ids = [int(np.argmin([((zi - e) ** 2).sum() for e in emb])) for zi in z]
    assert ids.tolist() == expected_ids == [0, 1, 1, 2, 0]

    cb.ema_update(torch.from_numpy(z), torch.from_numpy(ids))
    new_size, new_sum = np.zeros(4), np.zeros((4, 2))
    for k in range(4):
        count = sum(1 for i in ids if i == k)
        vec = sum((z[i] for i in range(len(z)) if ids[i] == k), np.zeros(2))
        new_size[k] = decay * size[k] + (1 - decay) * count
        new_sum[k] = decay * esum[k] + (1 - decay) * vec
    n = new_size.sum()
    new_emb = np.stack([new_sum[k] / ((new_size[k] + eps) / (n + 4 * eps) * n) for k in range(4)])
    np.testing.assert_allclose(cb.cluster_size.numpy(), new_size, rtol=1e-5)
    np.testing.assert_allclose(cb.embed_sum.numpy(), new_sum, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cb.embedding.numpy(), new_emb, rtol=1e-4, atol=1e-6)


def test_dead_code_restart_moves_unused_code() -> None:
    torch.manual_seed(0)
    cb = EMACodebook(vocab_size=3, embed_dim=2, decay=0.99, dead_code_threshold=0.5)
    cb.embedding.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [100.0, 100.0]]))
    cb.cluster_size.copy_(torch.tensor([5.0, 5.0, 0.2]))  # code 2 is below the threshold
    cb.embed_sum.copy_(cb.embedding * cb.cluster_size[:, None])
    z = torch.tensor([[0.1, 0.0], [0.0, 0.1], [0.9, 1.0], [1.1, 0.9]])
    cb.ema_update(z, cb.nearest(z))
    moved = cb.embedding[2]
    assert any(torch.equal(moved, row) for row in z), "dead code must sit on a batch vector"
    # It restarts with the threshold as usage and the batch vector as its mean.
    assert float(cb.cluster_size[2]) == pytest.approx(0.5)
    assert torch.allclose(cb.embed_sum[2], 0.5 * moved)
    # The used codes are only EMA-updated: still near their clusters.
    assert float((cb.embedding[0] - torch.tensor([0.05, 0.05])).norm()) < 0.1
    assert float((cb.embedding[1] - torch.tensor([1.0, 0.95])).norm()) < 0.1


def test_ema_updates_only_in_training_mode() -> None:
    torch.manual_seed(0)
    tok = tiny()
    x = smooth_images(4, 16)
    tok.eval()
    before = {k: v.clone() for k, v in tok.codebook.state_dict().items()}
    tok(x)
    assert all(torch.equal(before[k], v) for k, v in tok.codebook.state_dict().items())
    tok.train()
    tok(x)
    assert not torch.equal(before["cluster_size"], tok.codebook.cluster_size)


def test_straight_through_gradient_reaches_encoder() -> None:
    torch.manual_seed(0)
    tok = tiny()
    tok(smooth_images(4, 16))["loss"].backward()
    grad = tok.encoder.stem.weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0
    assert all(not b.requires_grad for b in tok.codebook.buffers())


def test_deterministic_given_seed() -> None:
    x = smooth_images(4, 16)
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        tok = tiny()
        tok(x)
        tok.eval()
        outs.append((tok.encode(x), tok.codebook.embedding.clone()))
    assert torch.equal(outs[0][0], outs[1][0])
    assert torch.equal(outs[0][1], outs[1][1])


def _opponent_loss(recon: torch.Tensor, x: torch.Tensor, weight: float) -> torch.Tensor:
    """The same loss computed another way: the error in an orthonormal opponent basis
    (luminance (R+G+B)/sqrt 3, red-green (R-G)/sqrt 2, yellow-blue (R+G-2B)/sqrt 6)."""
    basis = torch.tensor(
        [[1 / 3**0.5] * 3, [1 / 2**0.5, -1 / 2**0.5, 0.0], [1 / 6**0.5, 1 / 6**0.5, -2 / 6**0.5]],
        dtype=torch.float64,
    )
    e = torch.einsum("oc,bchw->bohw", basis, (recon - x).double())
    per_pixel = e[:, 0] ** 2 + weight * (e[:, 1] ** 2 + e[:, 2] ** 2)
    return per_pixel.mean() / 3


@pytest.mark.parametrize("weight", [1.0, 0.5, 4.0])
def test_chroma_weighted_mse_matches_an_opponent_colour_basis(weight: float) -> None:
    g = torch.Generator().manual_seed(0)
    x, recon = torch.rand(2, 3, 5, 7, generator=g), torch.rand(2, 3, 5, 7, generator=g)
    got = chroma_weighted_mse(recon, x, weight)
    assert float(got) == pytest.approx(float(_opponent_loss(recon, x, weight)), rel=1e-5)
    if weight == 1.0:  # exactly the plain MSE
        assert torch.equal(got, F.mse_loss(recon, x))
    # A grey error (equal in R, G, B) costs the same at any weight; a pure colour error
    # (channels summing to zero) costs ``weight`` times its MSE.
    grey_err = x + torch.rand(2, 1, 5, 7, generator=g) * 0.1
    assert float(chroma_weighted_mse(grey_err, x, weight)) == pytest.approx(
        float(F.mse_loss(grey_err, x)), rel=1e-5
    )
    colour_err = x + torch.tensor([0.1, -0.05, -0.05]).view(1, 3, 1, 1)
    assert float(chroma_weighted_mse(colour_err, x, weight)) == pytest.approx(
        weight * float(F.mse_loss(colour_err, x)), rel=1e-5
    )


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf])
def test_chroma_weight_must_be_positive_and_finite(bad: float) -> None:
    with pytest.raises(CimptError, match="chroma_weight must be positive and finite"):
        tiny(chroma_weight=bad)


def test_build_tokenizer_passes_the_chroma_weight_through() -> None:
    from cimpt.config import load_config
    from cimpt.tokenizers.load import build_tokenizer

    tok = build_tokenizer(load_config(None, ["tokenizer.chroma_weight=2.5"]).tokenizer)
    assert tok.chroma_weight == 2.5 and tok.arch_config()["chroma_weight"] == 2.5
    # The shipped default stays the plain MSE (docs/METHOD_CHOICES.md, "Tokenizer colour").
    assert build_tokenizer(load_config(None).tokenizer).chroma_weight == 1.0


def test_a_file_from_before_the_colour_weight_loads_as_plain_mse(tmp_path: Path) -> None:
    """Files written before ``chroma_weight`` existed hold no such field: they were trained
    with the plain MSE and load as such (not with whatever weight a config asks for)."""
    from safetensors.torch import load_file, save_file

    from cimpt.tokenizers.header import header_metadata, read_header
    from cimpt.tokenizers.load import load_tokenizer

    # Built with another weight, so a loaded 1.0 can only come from the missing field.
    tok = tiny(chroma_weight=3.0)
    arch = {k: v for k, v in tok.arch_config().items() if k != "chroma_weight"}
    old = tmp_path / "old.safetensors"
    save_file(tok.state_dict(), str(old), metadata=header_metadata("vqvae", arch))
    assert read_header(old) == ("vqvae", arch)  # the file holds no chroma_weight
    loaded = load_tokenizer(old)
    assert loaded.chroma_weight == 1.0  # type: ignore[attr-defined]
    for k, v in load_file(str(old)).items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_training_reduces_reconstruction_loss() -> None:
    torch.manual_seed(0)
    tok = tiny(vocab_size=32, width=16, embed_dim=8)
    data = smooth_images(32, 16)
    opt = torch.optim.Adam(tok.parameters(), lr=3e-3)
    losses = []
    for step in range(150):
        batch = data[(step * 8) % 32 : (step * 8) % 32 + 8]
        out = tok(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["recon_loss"]))
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    # The first steps sit at the mean-image predictor (MSE = pixel variance, ~0.06).
    assert last < 0.7 * first, (first, last)
    assert float(out["usage"]) > 1 / 32  # restarts keep more than one code alive


def _batch(rank: int, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * rank + step)
    return torch.randn(10, 3, generator=g) + rank


def _fresh_codebook(threshold: float) -> EMACodebook:
    cb = EMACodebook(vocab_size=6, embed_dim=3, decay=0.9, dead_code_threshold=threshold)
    cb.embedding.copy_(torch.randn(6, 3, generator=torch.Generator().manual_seed(0)))
    cb.cluster_size.fill_(1.0)
    cb.embed_sum.copy_(cb.embedding)
    return cb


def _ddp_worker(rank: int, world: int, init_file: str, result_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(100 + rank)  # different random restart picks per rank
    cb = _fresh_codebook(threshold=0.0)
    for step in range(4):
        z = _batch(rank, step)
        cb.ema_update(z, cb.nearest(z))
    phase1 = {k: v.clone() for k, v in cb.state_dict().items()}
    cb.dead_code_threshold = 1e9  # every code is dead: all restarted from rank 0's batch
    cb.ema_update(_batch(rank, 9), cb.nearest(_batch(rank, 9)))
    torch.save(
        {"phase1": phase1["embedding"], "phase2": cb.embedding.clone()},
        os.path.join(result_dir, f"rank{rank}.pt"),
    )
    dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_replicas_stay_identical_under_distributed() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_ddp_worker, args=(2, os.path.join(tmp, "init"), tmp), nprocs=2, join=True)
        r0 = torch.load(os.path.join(tmp, "rank0.pt"), weights_only=True)
        r1 = torch.load(os.path.join(tmp, "rank1.pt"), weights_only=True)
    # Reference: one process whose batches are both ranks' batches together. The nearest
    # codes are computed per rank first, since each rank assigns its own vectors.
    ref = _fresh_codebook(threshold=0.0)
    for step in range(4):
        z0, z1 = _batch(0, step), _batch(1, step)
        ids = torch.cat([ref.nearest(z0), ref.nearest(z1)])
        ref.ema_update(torch.cat([z0, z1]), ids)
    assert torch.equal(r0["phase1"], r1["phase1"])
    assert torch.allclose(r0["phase1"], ref.embedding, atol=1e-5)
    # Restarts pick rank 0's vectors and broadcast them: still identical replicas.
    assert torch.equal(r0["phase2"], r1["phase2"])
    rank0_rows = _batch(0, 9)
    assert all(any(torch.equal(row, v) for v in rank0_rows) for row in r0["phase2"])
