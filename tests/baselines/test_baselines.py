"""MAE, SimMIM and BEiT checked against independent computations on tiny models.

Each loss is recomputed here from its paper's definition with plain tensor operations, and
the masking claims (exact counts, which pixels the encoder can see) are probed by changing
the input where the model must not look.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cimpt.baselines.beit import BEiT
from cimpt.baselines.mae import MAE, MAEDecoder, split_visible
from cimpt.baselines.masked_input import MaskEmbedding
from cimpt.baselines.patches import normalize_patches, patchify
from cimpt.baselines.simmim import SimMIM
from cimpt.data.random_mask import RandomMaskGenerator
from cimpt.errors import CimptError
from cimpt.models.enhancer import Enhancer
from cimpt.tokenizers.vqvae import VQVAE

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_VIT = {"embed_dim": 32, "depth": 1, "num_heads": 2}
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def vit(img: int = 16, patch: int = 4) -> Enhancer:
    return Enhancer("vit_tiny_patch16_224", img, patch, 0.0, TINY_VIT)


def mae_model(norm_pix: bool = True) -> MAE:
    enh = vit()
    dec = MAEDecoder(enh.out_dim, 16, 1, 2, enh.grid, enh.patch_size, 1)
    return MAE(enh, dec, norm_pix_loss=norm_pix, mean=MEAN, std=STD).eval()


def random_masks(n: int, grid: int, ratio: float, unit: int = 1, seed: int = 0) -> torch.Tensor:
    gen = RandomMaskGenerator(grid, ratio, unit, seed)
    return torch.stack([gen() for _ in range(n)])


# ---- masks ----------------------------------------------------------------------------------
def test_mae_masks_have_the_exact_count_and_vary() -> None:
    masks = random_masks(200, 8, 0.75)
    assert (masks.flatten(1).sum(1) == 48).all()  # round(0.75 * 64), every image
    # Uniform over cells: every cell masked close to 75 % of the time.
    freq = masks.float().mean(0)
    assert freq.min() > 0.55 and freq.max() < 0.95
    assert len({m.numpy().tobytes() for m in masks}) == 200


def test_simmim_masks_are_aligned_unit_blocks() -> None:
    masks = random_masks(50, 8, 0.6, unit=2)
    # Each 2x2 block is all masked or all visible; round(0.6 * 16) = 10 blocks masked.
    blocks = masks.view(50, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(50, 16, 4)
    assert ((blocks.sum(-1) == 0) | (blocks.sum(-1) == 4)).all()
    assert ((blocks.sum(-1) == 4).sum(1) == 10).all()


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.2, 1.5])
def test_ratio_outside_the_open_interval_is_refused(ratio: float) -> None:
    with pytest.raises(CimptError, match=r"mae\.mask_ratio"):
        RandomMaskGenerator(8, ratio, key="mae.mask_ratio")


# ---- MAE ------------------------------------------------------------------------------------
def test_split_visible_unshuffles_to_grid_order() -> None:
    masks = random_masks(5, 4, 0.75, seed=3)
    order, restore = split_visible(masks)
    seq = torch.arange(16).expand(5, 16)
    shuffled = seq.gather(1, order)
    assert torch.equal(shuffled.gather(1, restore), seq)
    # Visible ids first, in increasing grid order.
    for b in range(5):
        visible = torch.nonzero(~masks[b].flatten()).flatten()
        assert torch.equal(order[b, : len(visible)], visible)


def test_normalized_target_has_zero_mean_unit_std_per_patch() -> None:
    x = torch.rand(2, 3, 16, 16) * 4 + 1
    t = normalize_patches(patchify(x, 4))
    assert t.shape == (2, 16, 48)
    assert torch.allclose(t.mean(-1), torch.zeros(2, 16), atol=1e-5)
    assert torch.allclose(t.std(-1), torch.ones(2, 16), atol=1e-4)
    # patchify keeps each patch's pixels together: patch (0, 1) is rows 0-3, columns 4-7.
    assert torch.equal(patchify(x, 4)[0, 1].view(3, 4, 4), x[0, :, 0:4, 4:8])


def test_mae_encoder_never_sees_masked_patches() -> None:
    model = mae_model()
    x = torch.randn(2, 3, 16, 16)
    mask = random_masks(2, 4, 0.75, seed=1)
    pix = mask.repeat_interleave(4, 1).repeat_interleave(4, 2).unsqueeze(1)
    x2 = torch.where(pix, torch.randn_like(x) * 10, x)  # change masked pixels only
    with torch.no_grad():
        assert torch.allclose(model.predict(x, mask), model.predict(x2, mask), atol=1e-5)
        assert not torch.allclose(model.predict(x, mask), model.predict(x * 2, mask))


@pytest.mark.parametrize("norm_pix", [True, False])
def test_mae_loss_is_mse_on_masked_patches_only(norm_pix: bool, monkeypatch) -> None:
    model = mae_model(norm_pix)
    x = torch.randn(2, 3, 16, 16)
    mask = random_masks(2, 4, 0.75, seed=2)
    pred = torch.randn(2, 16, 48)
    monkeypatch.setattr(model, "predict", lambda *_: pred)
    loss = model({"x": x, "mask": mask})["loss"]
    # Independent: loop over images and patches, keep the masked ones.
    errs = []
    for b in range(2):
        for i in range(4):
            for j in range(4):
                if mask[b, i, j]:
                    patch = x[b, :, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4].reshape(-1)
                    if norm_pix:
                        patch = (patch - patch.mean()) / (patch.var() + 1e-6).sqrt()
                    errs.append(((pred[b, 4 * i + j] - patch) ** 2).mean())
    assert torch.allclose(loss, torch.stack(errs).mean(), atol=1e-5)


def test_mae_refuses_a_cnn() -> None:
    enh = Enhancer("resnet18", 32, 8, 0.0, {}, neck_dim=8)
    dec = MAEDecoder(enh.out_dim, 16, 1, 2, enh.grid, 8, 0)
    with pytest.raises(CimptError, match="mae needs a ViT") as err:
        MAE(enh, dec, norm_pix_loss=True, mean=MEAN, std=STD)
    assert "\n" not in str(err.value)


# ---- SimMIM and the masked input ------------------------------------------------------------
def test_vit_mask_embedding_hides_masked_pixels_and_is_identity_without_mask() -> None:
    enh = vit().eval()
    embed = MaskEmbedding(enh)
    x = torch.randn(2, 3, 16, 16)
    none = torch.zeros(2, 4, 4, dtype=torch.bool)
    with torch.no_grad():
        assert torch.allclose(embed.features(enh, x, none), enh.features(x), atol=1e-6)
        mask = random_masks(2, 4, 0.5, seed=4)
        pix = mask.repeat_interleave(4, 1).repeat_interleave(4, 2).unsqueeze(1)
        x2 = torch.where(pix, torch.randn_like(x), x)
        assert torch.allclose(
            embed.features(enh, x, mask), embed.features(enh, x2, mask), atol=1e-5
        )


def test_cnn_mask_paints_masked_cells_with_the_learned_colour() -> None:
    enh = Enhancer("resnet18", 32, 8, 0.0, {}, neck_dim=8).eval()
    embed = MaskEmbedding(enh)
    with torch.no_grad():
        embed.token.copy_(torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1))
    x = torch.randn(1, 3, 32, 32)
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 1, 2] = True
    out = embed.mask_pixels(x, mask, 8)
    assert torch.equal(
        out[0, :, 8:16, 16:24], torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1).expand(3, 8, 8)
    )
    out[0, :, 8:16, 16:24] = x[0, :, 8:16, 16:24]
    assert torch.equal(out, x)  # nothing else changed


def test_simmim_loss_is_l1_over_masked_pixels(monkeypatch) -> None:
    model = SimMIM(vit(), mean=MEAN, std=STD)
    x = torch.randn(2, 3, 16, 16)
    mask = random_masks(2, 4, 0.5, unit=2, seed=5)
    pred = torch.randn(2, 3, 16, 16)
    monkeypatch.setattr(model, "predict", lambda *_: pred)
    loss = model({"x": x, "mask": mask})["loss"]
    pix = mask.repeat_interleave(4, 1).repeat_interleave(4, 2)  # [B, 16, 16]
    expected = (pred - x).abs().permute(0, 2, 3, 1)[pix].mean()  # masked pixels x 3 channels
    assert torch.allclose(loss, expected, atol=1e-6)


# ---- BEiT -----------------------------------------------------------------------------------
def test_beit_loss_is_cross_entropy_on_masked_tokens(monkeypatch) -> None:
    torch.manual_seed(0)
    tok = VQVAE(vocab_size=16, downsample=4, width=8, res_blocks=1, embed_dim=8)
    model = BEiT(tok, vit(), 16, mean=MEAN, std=STD)
    x, x_tok = torch.randn(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    mask = random_masks(2, 4, 0.4, seed=6)
    logits = torch.randn(2, 4, 4, 16)
    monkeypatch.setattr(model, "logits", lambda *_: logits)
    out = model({"x": x, "x_tok": x_tok, "mask": mask})
    z = tok.encode(x_tok)
    expected = F.cross_entropy(logits[mask], z[mask])
    assert torch.allclose(out["loss"], expected, atol=1e-5)
    acc = (logits[mask].argmax(-1) == z[mask]).float().mean()
    assert torch.allclose(out["beit_acc"], acc)
    # The tokenizer is frozen and not part of the model's weights.
    assert not any(k.startswith("_tokenizer") for k in model.state_dict())
