"""Precision choices: train.amp=auto, the fp32 tokenizer inside autocast, CPU attention kernel,
and one host read for all logged scalars."""

from __future__ import annotations

import pytest
import timm
import torch

import cimpt.engine.precision as P
from cimpt.engine.metrics import RunningMeans
from cimpt.tokenizers.vqvae import VQVAE

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")
# The probe itself: conftest's fp32_on_every_cpu replaces the module attribute in every test.
REAL_BF16_UNITS = P.cpu_bf16_units


@pytest.mark.parametrize(
    ("amp", "units", "want"),
    [
        ("none", "AMX", None),
        ("bf16", None, torch.bfloat16),
        ("fp16", None, torch.float16),
        ("auto", "AMX", torch.bfloat16),  # bf16 matrix units: bf16
        ("auto", "AVX512-BF16", torch.bfloat16),
        ("auto", None, None),  # without them bf16 is emulated and slow: fp32
    ],
)
def test_resolve_amp_on_cpu(monkeypatch, amp, units, want) -> None:
    monkeypatch.setattr(P, "cpu_bf16_units", lambda: units)
    assert P.resolve_amp(amp, CPU) is want
    if want is torch.bfloat16 and units:
        assert P.describe(want, CPU) == f"bf16 autocast (CPU with {units})"


@pytest.mark.parametrize(
    ("extra", "amx_probe", "avx_probe", "want"),
    [
        ("amx_bf16 amx_tile avx512_bf16", True, True, "AMX"),
        ("amx_tile avx512_bf16", True, True, "AVX512-BF16"),  # tiles without bf16
        ("amx_bf16 amx_tile avx512_bf16", False, True, "AVX512-BF16"),  # OS left tiles off
        ("avx512_bf16", None, None, "AVX512-BF16"),  # no torch probes: the flags decide
        ("amx_bf16 amx_tile", None, None, "AMX"),
        ("avx512_bf16", False, False, None),  # torch's probe wins over the flag
        ("", None, None, None),
    ],
)
def test_bf16_units_probe(monkeypatch, tmp_path, extra, amx_probe, avx_probe, want) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(f"model name\t: test\nflags\t\t: fpu sse avx2 avx512f {extra}\n")
    monkeypatch.setattr(P, "Path", lambda _p: info)
    for name, value in (
        ("_is_amx_tile_supported", amx_probe),
        ("_is_avx512_bf16_supported", avx_probe),
    ):
        if value is None:
            monkeypatch.delattr(torch.cpu, name, raising=False)
        else:
            monkeypatch.setattr(torch.cpu, name, lambda v=value: v, raising=False)
    assert REAL_BF16_UNITS.__wrapped__() == want  # the uncached function
    assert P.cpuinfo_field("model name") == "test"


def _vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2
    ).eval()


def test_explicit_attention_only_for_cpu_bf16_and_same_output() -> None:
    model = _vit()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        fused = model(x)
    assert P.choose_attention(model, CPU, None) == 0
    assert P.choose_attention(model, torch.device("cuda"), torch.bfloat16) == 0
    assert P.choose_attention(model, CPU, torch.bfloat16) == 2  # one per block
    assert not any(getattr(m, "fused_attn", False) for m in model.modules())
    with torch.no_grad():
        explicit = model(x)
    torch.testing.assert_close(explicit, fused, rtol=1e-5, atol=1e-5)


class _AutocastProbe(VQVAE):
    """A VQ-VAE that records whether autocast was on when it encoded and decoded."""

    seen: list[bool]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(torch.is_autocast_enabled("cpu"))
        return super().encode(x)

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        self.seen.append(torch.is_autocast_enabled("cpu"))
        return super().decode(ids)


@pytest.mark.parametrize(("precision", "autocast_inside"), [("fp32", False), ("amp", True)])
def test_tokenizer_precision_inside_bf16_autocast(precision, autocast_inside) -> None:
    from cimpt.cim import CIM
    from cimpt.cim_objectives import Revdet
    from cimpt.models.enhancer import Enhancer
    from cimpt.models.generator import BEiTGenerator

    torch.manual_seed(0)
    tok = _AutocastProbe(vocab_size=64, downsample=4, width=16, res_blocks=1, embed_dim=8)
    tok.seen = []
    gen = BEiTGenerator(16, 4, 64, embed_dim=16, depth=1, num_heads=2, mlp_ratio=2.0)
    vit = {"embed_dim": 16, "depth": 1, "num_heads": 2}
    enh = Enhancer("vit_tiny_patch16_224", 16, 4, 0.0, vit)
    cim = CIM(
        tok,
        gen,
        enh,
        Revdet(enh.out_dim, enh.grid),
        mean=[0.5] * 3,
        std=[0.25] * 3,
        tokenizer_precision=precision,
    )
    x_tok = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        ref = tok.encode(x_tok)  # plain fp32, no autocast
    tok.seen.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = cim.golden_tokens(x_tok)
        img = cim.decode_image(z)
    assert tok.seen == [autocast_inside, autocast_inside]
    assert img.dtype == torch.float32
    if precision == "fp32":
        assert torch.equal(z, ref)  # the ids of a plain fp32 run, exactly


def test_unknown_tokenizer_precision_is_one_error(tmp_path) -> None:
    from cimpt.config import load_config
    from cimpt.errors import ConfigError

    with pytest.raises(ConfigError, match=r"tokenizer\.precision"):
        load_config(None, ["tokenizer.precision=half"])


def test_running_means_reads_tensors_back_once(monkeypatch) -> None:
    means = RunningMeans()
    means.add({"loss": torch.tensor(1.0), "acc": 0.5})
    means.add({"loss": torch.tensor(3.0), "acc": 1.0, "gn": torch.tensor(2.0)})
    stacks = []
    real_stack = torch.stack
    monkeypatch.setattr(torch, "stack", lambda ts, *a, **k: stacks.append(1) or real_stack(ts))
    out = means.pop()
    assert out == {"loss": 2.0, "acc": 0.75, "gn": 2.0}
    assert list(out) == ["loss", "acc", "gn"]  # the order values were first added in
    assert len(stacks) == 1  # one transfer for all tensor values
    assert means.pop() == {}


def test_codebook_lookup_is_fp32_under_bf16_autocast() -> None:
    from cimpt.tokenizers.vqvae import EMACodebook

    torch.manual_seed(0)
    book = EMACodebook(vocab_size=512, embed_dim=16, decay=0.99, dead_code_threshold=0.01)
    book.embedding.copy_(torch.randn(512, 16))
    z = torch.randn(4096, 16)
    want = torch.cdist(z.double(), book.embedding.double()).argmin(1)  # independent, float64
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = book.nearest(z)
    assert torch.equal(got, want)
