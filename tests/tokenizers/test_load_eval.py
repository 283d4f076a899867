"""Tests of tokenizer building, saving/loading and evaluation (tokenizers.load, .evaluate)."""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from cimpt.config import load_config, save_config
from cimpt.errors import CimptError
from cimpt.tokenizers.base import ImageTokenizer
from cimpt.tokenizers.evaluate import (
    evaluate_tokenizer,
    evaluate_tokenizer_command,
    save_reconstruction_figure,
)
from cimpt.tokenizers.load import build_tokenizer, load_tokenizer, save_tokenizer
from cimpt.tokenizers.metrics import batch_psnr, codebook_stats, colourfulness
from cimpt.tokenizers.vqvae import VQVAE

ARCH = dict(vocab_size=16, downsample=4, width=16, res_blocks=1, embed_dim=4)


def trained_tiny(seed: int = 0) -> VQVAE:
    """A tiny VQ-VAE after one training step, so its EMA buffers are not the initial ones."""
    torch.manual_seed(seed)
    tok = VQVAE(**ARCH)
    tok(torch.rand(4, 3, 16, 16))
    return tok


def tok_cfg(**kw):
    cfg = load_config()
    for k, v in {**ARCH, **kw}.items():
        # update, not assignment: OmegaConf deprecates assigning a str to an enum field
        OmegaConf.update(cfg, f"tokenizer.{k}", v)
    return cfg.tokenizer


# ---------------------------------------------------------------- metrics


def test_codebook_stats_by_hand() -> None:
    uniform = torch.zeros(32)
    uniform[[0, 3, 5, 7, 9, 11, 20, 31]] = 5
    stats = codebook_stats(uniform)
    assert float(stats["perplexity"]) == pytest.approx(8.0, rel=1e-5)
    assert float(stats["usage"]) == pytest.approx(8 / 32)
    skewed = codebook_stats(torch.tensor([1, 3, 0, 0]))
    entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert float(skewed["perplexity"]) == pytest.approx(math.exp(entropy), rel=1e-5)
    assert float(skewed["usage"]) == pytest.approx(0.5)
    empty = codebook_stats(torch.zeros(4))
    assert float(empty["usage"]) == 0.0 and float(empty["perplexity"]) == pytest.approx(1.0)


def test_batch_psnr_by_hand() -> None:
    target = torch.zeros(2, 3, 4, 4)
    recon = torch.zeros(2, 3, 4, 4)
    recon[0] += 0.1  # MSE 0.01 -> 20 dB
    recon[1, 0] = 0.3  # MSE 0.09 / 3 = 0.03
    psnr = batch_psnr(recon, target)
    assert psnr.tolist() == pytest.approx([20.0, 10 * math.log10(1 / 0.03)], rel=1e-5)


def test_colourfulness_by_hand() -> None:
    grey = torch.full((1, 3, 2, 2), 0.4)
    # Two pixels, pure red and pure green: rg = [1, -1] (std 1, mean 0), yb = [0.5, 0.5]
    # (std 0, mean 0.5), so sqrt(1 + 0) + 0.3 * sqrt(0 + 0.25) = 1.15.
    red_green = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]).reshape(1, 3, 1, 2)
    # One blue pixel: rg = 0, yb = -1, no spread: 0.3 * 1.
    blue = torch.tensor([0.0, 0.0, 1.0]).reshape(1, 3, 1, 1)
    assert colourfulness(grey).tolist() == [0.0]
    assert colourfulness(red_green).tolist() == pytest.approx([1.15])
    assert colourfulness(blue).tolist() == pytest.approx([0.3])


class BlockMeanTokenizer(ImageTokenizer):
    """Independent stand-in: id = round(7 * mean of the 4x4 block); decode paints id / 7."""

    def __init__(self) -> None:
        super().__init__()
        self.vocab_size, self.downsample = 8, 4

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.nn.functional.avg_pool2d(x.mean(1, keepdim=True), 4) * 7).round().long()[:, 0]

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        img = (ids.float() / 7).repeat_interleave(4, 1).repeat_interleave(4, 2)
        return img[:, None].expand(-1, 3, -1, -1)

    def arch_config(self) -> dict:
        return {"kind": "block"}


def _collate(items: list[torch.Tensor]) -> dict:
    return {"x": torch.stack(items), "label": torch.zeros(len(items)), "skipped": 1}


def test_evaluate_tokenizer_against_numpy_loops() -> None:
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 8, 8, generator=g) for _ in range(5)]
    loader = DataLoader(images, batch_size=2, collate_fn=_collate)
    res = evaluate_tokenizer(BlockMeanTokenizer(), loader, "cpu")

    psnrs, hist = [], np.zeros(8)
    for img in images:
        a = img.numpy()
        rec = np.zeros_like(a)
        for i in range(2):
            for j in range(2):
                block = a[:, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4]
                code = int(np.round(block.mean() * 7))
                hist[code] += 1
                rec[:, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4] = code / 7
        psnrs.append(10 * math.log10(1 / ((rec - a) ** 2).mean()))
    p = hist / hist.sum()
    perplexity = math.exp(-sum(q * math.log(q) for q in p if q > 0))
    assert res["psnr"] == pytest.approx(np.mean(psnrs), rel=1e-5)
    assert res["perplexity"] == pytest.approx(perplexity, rel=1e-5)
    assert res["usage"] == pytest.approx((hist > 0).sum() / 8)
    assert res["colour_kept"] == 0.0  # it decodes grey: none of the colour is kept
    assert res["n_images"] == 5
    assert res["skipped"] == 3  # one per batch from the collate


class DesaturatingTokenizer(ImageTokenizer):
    """Independent stand-in that reconstructs image 0 of a batch as grey and keeps the rest
    (encode stores the batch; ids are the positions)."""

    def __init__(self) -> None:
        super().__init__()
        self.vocab_size, self.downsample = 8, 1
        self.seen = torch.zeros(0)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x.clone()
        return torch.arange(x.shape[0]).view(-1, 1, 1)

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.seen[ids.flatten()].clone()
        out[0] = out[0].mean(0, keepdim=True)  # grey: colourfulness 0
        return out

    def arch_config(self) -> dict:
        return {"kind": "desaturate"}


def test_colour_kept_is_a_ratio_of_sums() -> None:
    # Red | green (colourfulness 1.15) made grey, blue (0.3) kept: (0 + 0.3) / (1.15 + 0.3),
    # not the mean of the per-image ratios (0 + 1) / 2.
    red_green = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]).reshape(3, 1, 2)
    blue = torch.tensor([0.0, 0.0, 1.0]).reshape(3, 1, 1).expand(3, 1, 2)
    loader = DataLoader([red_green, blue], batch_size=2, collate_fn=_collate)
    res = evaluate_tokenizer(DesaturatingTokenizer(), loader, "cpu")
    assert res["colour_kept"] == pytest.approx(0.3 / 1.45)


def test_reconstruction_figure_layout(tmp_path: Path) -> None:
    images = torch.rand(3, 3, 8, 8)
    recons = torch.rand(3, 3, 8, 8)
    out = save_reconstruction_figure(images, recons, tmp_path / "sub" / "fig.png", n=16)
    arr = np.asarray(Image.open(out))
    # A 14 px title strip, then 3 pairs -> 6 tiles in one row, 8 px each, 2 px padding around.
    assert arr.shape == (14 + 12, 62, 3)
    assert (arr[:14] < 128).any()  # the column titles are drawn in the strip
    expected_orig = (images[1].permute(1, 2, 0).numpy() * 255).round()
    expected_rec = (recons[1].permute(1, 2, 0).numpy() * 255).round()
    x0 = 2 + 2 * 10  # the third tile is the second original
    np.testing.assert_allclose(arr[16:24, x0 : x0 + 8], expected_orig, atol=1)
    np.testing.assert_allclose(arr[16:24, x0 + 10 : x0 + 18], expected_rec, atol=1)
    assert sorted(p.name for p in out.parent.iterdir()) == ["fig.png"]  # no temp files left


# ---------------------------------------------------------------- build / save / load


def test_build_tokenizer_from_config() -> None:
    tok = build_tokenizer(OmegaConf.to_object(tok_cfg(vocab_size=64)))
    assert isinstance(tok, VQVAE) and tok.vocab_size == 64 and tok.downsample == 4
    assert tok.codebook.decay == pytest.approx(0.99)
    with pytest.raises(CimptError, match=r"needs tokenizer\.checkpoint"):
        build_tokenizer(OmegaConf.to_object(tok_cfg(kind="dalle")))


def test_save_load_round_trip(tmp_path: Path) -> None:
    tok = trained_tiny()
    tok.eval()
    path = save_tokenizer(tok, tmp_path / "a" / "b" / "tok.safetensors")
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    assert meta["cimpt_tokenizer"] == "vqvae"
    assert json.loads(meta["arch"]) == tok.arch_config()
    loaded = load_tokenizer(path)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        ids = tok.encode(x)
        assert torch.equal(loaded.encode(x), ids)
        assert torch.equal(loaded.decode(ids), tok.decode(ids))
    assert torch.equal(loaded.codebook.cluster_size, tok.codebook.cluster_size)
    assert [p.name for p in path.parent.iterdir()] == ["tok.safetensors"]


def _engine_checkpoint(tok: VQVAE, folder: Path) -> Path:
    """An engine-style checkpoint: model.safetensors with keys prefixed 'tokenizer.'."""
    folder.mkdir(parents=True)
    tensors = {f"tokenizer.{k}": v.contiguous() for k, v in tok.state_dict().items()}
    meta = {"cimpt_tokenizer": "vqvae", "arch": json.dumps(tok.arch_config())}
    save_file(tensors, str(folder / "model.safetensors"), metadata=meta)
    return folder


def _same(a: VQVAE, b: ImageTokenizer) -> bool:
    return torch.equal(a.codebook.embedding, b.codebook.embedding)  # type: ignore[union-attr]


def test_load_checkpoint_and_run_dirs(tmp_path: Path) -> None:
    old, new, exported = trained_tiny(1), trained_tiny(2), trained_tiny(3)
    run = tmp_path / "run"
    _engine_checkpoint(old, run / "checkpoints" / "step_900")
    _engine_checkpoint(new, run / "checkpoints" / "step_1200")  # newest by number, not name
    assert _same(new, load_tokenizer(run / "checkpoints" / "step_900" / ".." / "step_1200"))
    assert _same(old, load_tokenizer(run / "checkpoints" / "step_900"))
    assert _same(new, load_tokenizer(run))
    save_tokenizer(exported, run / "tokenizer.safetensors")
    assert _same(exported, load_tokenizer(run))  # the exported file is preferred


def test_load_real_training_checkpoint(tokenizer_run: Path) -> None:
    """A checkpoint of ``cimpt tokenizer train`` holds no tokenizer header, only the run
    config: the loader rebuilds the VQ-VAE from its ``tokenizer`` section. The last step's
    checkpoint and the exported file hold the same weights, so they give the same ids and
    decodes of random images."""
    (ckpt,) = sorted((tokenizer_run / "checkpoints").glob("step_*"))[-1:]
    with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
        assert "cimpt_tokenizer" not in (f.metadata() or {})  # the case this test is for
    from_ckpt = load_tokenizer(ckpt)
    exported = load_tokenizer(tokenizer_run / "tokenizer.safetensors")
    assert from_ckpt.arch_config() == exported.arch_config()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        ids = exported.encode(x)
        assert torch.equal(from_ckpt.encode(x), ids)
        assert torch.equal(from_ckpt.decode(ids), exported.decode(ids))


def test_load_delegates_dalle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    fake = BlockMeanTokenizer()

    def load_dalle_tokenizer(path):
        calls.append(Path(path))
        return fake

    module = types.ModuleType("cimpt.tokenizers.dalle_io")
    module.load_dalle_tokenizer = load_dalle_tokenizer  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cimpt.tokenizers.dalle_io", module)
    path = tmp_path / "dalle.safetensors"
    arch = {"kind": "dalle", "vocab_size": 8192, "downsample": 8}
    save_file(
        {"w": torch.zeros(1)},
        str(path),
        metadata={"cimpt_tokenizer": "dalle", "arch": json.dumps(arch)},
    )
    assert load_tokenizer(path) is fake and calls == [path]
    assert not fake.training
    pickles = tmp_path / "released"
    pickles.mkdir()
    (pickles / "encoder.pkl").write_bytes(b"")
    (pickles / "decoder.pkl").write_bytes(b"")
    assert load_tokenizer(pickles) is fake and calls[-1] == pickles


# ---------------------------------------------------------------- load errors


def test_load_missing_path(tmp_path: Path) -> None:
    with pytest.raises(CimptError, match=r"tokenizer checkpoint not found: .*nope"):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(CimptError, match="holds no tokenizer checkpoint"):
        load_tokenizer(tmp_path)


def test_load_not_safetensors(tmp_path: Path) -> None:
    bad = tmp_path / "weights.pt"
    bad.write_bytes(b"\x80\x04not a safetensors file at all")
    with pytest.raises(CimptError, match=r"weights\.pt is not a cimpt tokenizer checkpoint \("):
        load_tokenizer(bad)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(CimptError, match=r"plain\.safetensors is not a cimpt tokenizer .*metadata"):
        load_tokenizer(plain)


def test_load_unknown_kind(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"cimpt_tokenizer": "magic", "arch": "{}"})
    with pytest.raises(CimptError, match="unknown tokenizer kind 'magic'"):
        load_tokenizer(path)


def test_load_expected_mismatch_lists_fields(tmp_path: Path) -> None:
    path = save_tokenizer(trained_tiny(), tmp_path / "t.safetensors")
    load_tokenizer(path, expected=tok_cfg())  # identical arch: fine
    load_tokenizer(path, expected=tok_cfg(commitment=0.5))  # training-only field: fine
    with pytest.raises(CimptError) as err:
        load_tokenizer(path, expected=tok_cfg(vocab_size=512, width=32))
    msg = str(err.value)
    assert "vocab_size: checkpoint 16 vs config 512" in msg
    assert "width: checkpoint 16 vs config 32" in msg
    assert "downsample" not in msg and "\n" not in msg
    assert OmegaConf.is_config(tok_cfg())


def test_load_weight_shapes_mismatch(tmp_path: Path) -> None:
    small = VQVAE(**{**ARCH, "width": 8})
    path = tmp_path / "t.safetensors"
    lying = {"cimpt_tokenizer": "vqvae", "arch": json.dumps(VQVAE(**ARCH).arch_config())}
    save_file({k: v.contiguous() for k, v in small.state_dict().items()}, str(path), metadata=lying)
    with pytest.raises(CimptError) as err:
        load_tokenizer(path)
    msg = str(err.value)
    assert "t.safetensors do not fit the vqvae tokenizer: " in msg
    assert "encoder.stem.weight" in msg or "more)" in msg
    assert "(+" in msg and "\n" not in msg  # long lists are shortened


# ---------------------------------------------------------------- the command


def test_evaluate_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The command with the data module replaced by plain stand-ins (cimpt.data may lag)."""
    import cimpt.data as data_mod

    sizes = []

    class EvalTransform:
        def __init__(self, size: int) -> None:
            sizes.append(size)

    def build_dataset(cfg, split, transform):
        assert split == "val"
        g = torch.Generator().manual_seed(0)
        return [torch.rand(3, sizes[-1], sizes[-1], generator=g) for _ in range(6)]

    def build_loader(
        dataset, batch_size, num_workers, collate_fn, sampler, seed, drop_last, **kwargs
    ):
        return DataLoader(dataset, batch_size=batch_size, collate_fn=collate_fn)

    for name, obj in dict(
        EvalTransform=EvalTransform,
        build_dataset=build_dataset,
        build_loader=build_loader,
        ImageCollate=lambda: _collate,
    ).items():
        monkeypatch.setattr(data_mod, name, obj, raising=False)

    run = tmp_path / "run"
    save_tokenizer(trained_tiny(), run / "tokenizer.safetensors")
    # The stored run config (16 px images) must win over the defaults (32 px).
    save_config(load_config(overrides=["data.img_size=16"]), run / "config.yaml")
    out_dir = tmp_path / "out"
    res = evaluate_tokenizer_command(
        str(run), [f"run.dir={out_dir}", "train.batch_size=4", "train.device=cpu"]
    )
    assert sizes == [16]
    assert res["n_images"] == 6 and 0 < res["usage"] <= 1 and res["psnr"] > 0
    saved = json.loads((out_dir / "tokenizer_eval.json").read_text())
    assert saved["psnr"] == pytest.approx(res["psnr"])
    assert Image.open(out_dir / "tokenizer_recon.png").size[0] > 16
    printed = capsys.readouterr().out
    assert "PSNR" in printed and "usage" in printed and "data: " in printed

    # Without run.dir the results go next to the checkpoint.
    evaluate_tokenizer_command(str(run / "tokenizer.safetensors"), ["train.device=cpu"])
    assert (run / "tokenizer_eval.json").is_file() and (run / "tokenizer_recon.png").is_file()


def test_eval_names_the_data_it_evaluates_on() -> None:
    """A folder run whose config keeps a CIFAR val_path must not look evaluated on its own
    images: the printed report names the split (issue 16 walk-through)."""
    from cimpt.tokenizers.evaluate import eval_data_name

    cfg = load_config(overrides=["data.path=/my/imgs", "data.val_path=/other/test"])
    assert eval_data_name(cfg.data) == "data.val_path=/other/test"
    cfg = load_config(overrides=["data.path=cifar10", "data.val_path="])
    assert eval_data_name(cfg.data) == "the test split of data.path=cifar10"


def test_tokenizer_training_summary_names_the_view_size() -> None:
    """The start-up line says at which size the tokenizer learns (issue 16 walk-through)."""
    from cimpt.tokenizers.train import TokenizerTask

    tok = build_tokenizer(load_config(overrides=["tokenizer.downsample=4"]).tokenizer)
    assert TokenizerTask(tok, [], None, 32).describe() == "32 px views, 8x8 tokens of 4 px"
    assert TokenizerTask(tok, [], None).describe() == ""
