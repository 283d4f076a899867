"""DALL-E dVAE tokenizer: our re-implementation against the original ``dall_e`` modules, and the
restricted loader of their pickles (CIM uses the DALL-E dVAE as its frozen tokenizer)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from cimpt.errors import CimptError
from cimpt.tokenizers.dalle import DalleTokenizer, map_pixels, state_dict_from_original
from cimpt.tokenizers.dalle_io import (
    _unpickle_restricted,
    convert_dalle_pickles,
    infer_arch,
    load_dalle_pickle,
    load_dalle_tokenizer,
)

VOCAB = 64
SMALL = dict(
    vocab_size=VOCAB,
    encoder_hid=8,
    encoder_blocks=1,
    decoder_init=8,
    decoder_hid=8,
    decoder_blocks=1,
)


def _reference_map(x: torch.Tensor) -> torch.Tensor:
    return 0.8 * x + 0.1  # DALL-E's map_pixels with eps = 0.1, written out


def _reference_unmap(x: torch.Tensor) -> torch.Tensor:
    return ((x - 0.1) / 0.8).clamp(0, 1)


@pytest.fixture(scope="module")
def originals():
    """Small original dall_e Encoder/Decoder with random weights AND biases."""
    attr = pytest.importorskip("attr")
    pytest.importorskip("dall_e")
    from dall_e.decoder import Decoder
    from dall_e.encoder import Encoder

    torch.manual_seed(0)
    # The originals' validators insist on full-size widths; tests only need the structure.
    with attr.validators.disabled():
        enc = Encoder(n_hid=16, n_blk_per_group=2, vocab_size=VOCAB)
        dec = Decoder(n_init=8, n_hid=16, n_blk_per_group=2, vocab_size=VOCAB)
    with torch.no_grad():
        for m in (enc, dec):
            for name, p in m.named_parameters():
                if name.endswith(".b"):
                    p.normal_(std=0.1)
    return enc.eval(), dec.eval()


@pytest.fixture()
def pickles(tmp_path: Path, originals) -> Path:
    enc, dec = originals
    torch.save(enc, tmp_path / "encoder.pkl")  # whole modules: the released files' format
    torch.save(dec, tmp_path / "decoder.pkl")
    return tmp_path


def test_pickle_state_dict_equals_original(pickles: Path, originals) -> None:
    enc, dec = originals
    for module, part in ((enc, "encoder"), (dec, "decoder")):
        sd = load_dalle_pickle(pickles / f"{part}.pkl", part)
        ref = module.state_dict()
        assert sorted(sd) == sorted(ref)
        assert all(torch.equal(sd[k], ref[k]) for k in ref)


def test_legacy_torch_format_is_read(tmp_path: Path, originals) -> None:
    enc, _ = originals
    torch.save(enc, tmp_path / "old.pkl", _use_new_zipfile_serialization=False)
    sd = load_dalle_pickle(tmp_path / "old.pkl", "encoder")
    assert all(torch.equal(sd[k], v) for k, v in enc.state_dict().items())


def test_loader_needs_no_dall_e_package(pickles: Path, monkeypatch) -> None:
    # A None entry in sys.modules makes any import of dall_e fail.
    for name in [m for m in sys.modules if m == "dall_e" or m.startswith("dall_e.")]:
        monkeypatch.setitem(sys.modules, name, None)
    tok = load_dalle_tokenizer(pickles)
    assert tok.vocab_size == VOCAB


def test_encode_matches_original(pickles: Path, originals) -> None:
    enc, _ = originals
    tok = load_dalle_tokenizer(pickles)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        ref = enc(_reference_map(x))
    ours = tok.encode_logits(x)
    assert ours.shape == (2, VOCAB, 2, 2)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(tok.encode(x), ref.argmax(1))


def test_decode_matches_original(pickles: Path, originals) -> None:
    _, dec = originals
    tok = load_dalle_tokenizer(pickles)
    ids = torch.randint(0, VOCAB, (2, 2, 3))
    one_hot = F.one_hot(ids, VOCAB).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        ref = _reference_unmap(torch.sigmoid(dec(one_hot)[:, :3]))
    out = tok.decode(ids)
    assert out.shape == (2, 3, 16, 24)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_convert_round_trip(pickles: Path, tmp_path: Path) -> None:
    out = convert_dalle_pickles(
        pickles / "encoder.pkl", pickles / "decoder.pkl", tmp_path / "sub" / "dalle.safetensors"
    )
    assert out == tmp_path / "sub" / "dalle.safetensors" and out.is_file()
    assert not list(out.parent.glob("*.tmp"))
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
    assert meta["cimpt_tokenizer"] == "dalle"
    arch = json.loads(meta["arch"])
    assert arch == dict(
        vocab_size=VOCAB,
        encoder_hid=16,
        encoder_blocks=2,
        decoder_init=8,
        decoder_hid=16,
        decoder_blocks=2,
        input_channels=3,
        output_channels=3,
    )
    assert all(k.startswith(("encoder.", "decoder.")) for k in keys)
    a, b = load_dalle_tokenizer(pickles), load_dalle_tokenizer(out)
    x = torch.rand(1, 3, 16, 16)
    ids = torch.randint(0, VOCAB, (1, 2, 2))
    assert torch.equal(a.encode_logits(x), b.encode_logits(x))
    assert torch.equal(a.decode(ids), b.decode(ids))
    assert not b.training and not any(p.requires_grad for p in b.parameters())


def test_wrong_part_is_refused(pickles: Path) -> None:
    with pytest.raises(CimptError, match=r"holds a dall_e\.decoder\.Decoder"):
        load_dalle_pickle(pickles / "decoder.pkl", "encoder")


class _Evil:
    """Pickles as a call of os.system: loading it with plain pickle would run the command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_forbidden_global_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    bad = tmp_path / "encoder.pkl"
    torch.save({"x": _Evil(marker)}, bad)
    with pytest.raises(CimptError, match=r"refusing to load .*references (posix|os|nt)\.system"):
        load_dalle_pickle(bad, "encoder")
    # The second layer (torch's weights-only unpickler with stand-ins) refuses it on its own.
    with pytest.raises(CimptError, match=r"(posix|os|nt)\.system"):
        _unpickle_restricted(bad)
    assert not marker.exists()


def test_forbidden_global_in_legacy_format_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    bad = tmp_path / "old.pkl"
    torch.save({"x": _Evil(marker)}, bad, _use_new_zipfile_serialization=False)
    with pytest.raises(CimptError, match=r"refusing to load .*references (posix|os|nt)\.system"):
        load_dalle_pickle(bad, "encoder")
    with pytest.raises(CimptError, match=r"(posix|os|nt)\.system"):
        _unpickle_restricted(bad)  # the legacy path's own restricted unpickler
    assert not marker.exists()


def test_harmless_but_foreign_class_is_refused(tmp_path: Path) -> None:
    from collections import Counter

    bad = tmp_path / "encoder.pkl"
    torch.save({"c": Counter("ab")}, bad)
    with pytest.raises(CimptError, match=r"references collections\.Counter, which is not part"):
        load_dalle_pickle(bad, "encoder")


def test_missing_and_non_checkpoint_files(tmp_path: Path) -> None:
    with pytest.raises(CimptError, match="not found"):
        load_dalle_tokenizer(tmp_path / "nope.safetensors")
    with pytest.raises(CimptError, match=r"lacks encoder\.pkl and decoder\.pkl"):
        load_dalle_tokenizer(tmp_path)
    junk = tmp_path / "junk.bin"
    junk.write_text("hello, not a checkpoint\n")
    with pytest.raises(CimptError, match="not a DALL-E checkpoint"):
        load_dalle_tokenizer(junk)
    with pytest.raises(CimptError, match=r"not a torch\.save file"):
        load_dalle_pickle(junk, "encoder")


def test_state_dict_file_and_shape_mismatch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tok = DalleTokenizer(**SMALL)
    good = tmp_path / "good.pt"
    torch.save(tok.state_dict(), good)
    loaded = load_dalle_tokenizer(good)
    assert loaded.arch_config() == tok.arch_config()
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(loaded.encode(x), tok.encode(x))

    sd = tok.state_dict()
    sd["decoder.blocks.input.weight"] = torch.zeros(8, VOCAB + 1, 1, 1)  # vocab disagrees
    del sd["encoder.blocks.group_2.block_1.res_path.conv_2.bias"]
    bad = tmp_path / "bad.pt"
    torch.save(sd, bad)
    with pytest.raises(CimptError) as info:
        load_dalle_tokenizer(bad)
    msg = str(info.value)
    assert "\n" not in msg
    assert "missing encoder.blocks.group_2.block_1.res_path.conv_2.bias" in msg
    assert "bad.pt do not fit the DALL-E dVAE" in msg
    shapes = f"shape (file vs model) decoder.blocks.input.weight [8, {VOCAB + 1}, 1, 1] vs "
    assert f"{shapes}[8, {VOCAB}, 1, 1]" in msg


def test_whole_module_file_points_to_converter(pickles: Path) -> None:
    with pytest.raises(CimptError, match="convert-dalle"):
        load_dalle_tokenizer(pickles / "encoder.pkl")


# ---- our architecture on its own (no dall_e needed) ----


def test_pixel_maps_match_formula() -> None:
    x = torch.rand(1, 3, 4, 4)
    torch.testing.assert_close(map_pixels(x), _reference_map(x))
    assert map_pixels(torch.zeros(1)).item() == pytest.approx(0.1)
    assert map_pixels(torch.ones(1)).item() == pytest.approx(0.9)


def test_shapes_ranges_and_rebuild() -> None:
    torch.manual_seed(0)
    tok = DalleTokenizer(**SMALL).freeze()
    x = torch.rand(3, 3, 16, 8)
    ids = tok.encode(x)
    assert ids.shape == (3, 2, 1) and ids.dtype == torch.int64
    assert int(ids.min()) >= 0 and int(ids.max()) < VOCAB
    img = tok.decode(ids)
    assert img.shape == (3, 3, 16, 8) and float(img.min()) >= 0 and float(img.max()) <= 1
    again = DalleTokenizer(**tok.arch_config())
    assert infer_arch(tok.state_dict()) == tok.arch_config()
    assert again.state_dict().keys() == tok.state_dict().keys()
    with pytest.raises(CimptError, match="not divisible by 8"):
        tok.encode(torch.rand(1, 3, 12, 16))


def test_decoder_id_gather_equals_one_hot_input() -> None:
    torch.manual_seed(1)
    tok = DalleTokenizer(**SMALL)
    with torch.no_grad():
        tok.decoder.blocks.input.bias.normal_()
    ids = torch.randint(0, VOCAB, (2, 3, 2))
    one_hot = F.one_hot(ids, VOCAB).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        torch.testing.assert_close(tok.decoder.forward_ids(ids), tok.decoder(one_hot))


def test_state_dict_name_mapping() -> None:
    sd = {"blocks.input.w": torch.zeros(1), "blocks.output.conv.b": torch.ones(1)}
    out = state_dict_from_original(sd, "encoder.")
    assert set(out) == {"encoder.blocks.input.weight", "encoder.blocks.output.conv.bias"}
