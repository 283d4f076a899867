"""Tokenizer evaluation: reconstruction PSNR and codebook usage on held-out images.

A CIM tokenizer must reconstruct well (the corrupted image is a decoded token grid, docs/METHOD.md
step 6, so its reconstruction error bounds how clean an "unreplaced" region can look) and use
much of its vocabulary (the generator classifies over it, step 4). This module measures both:
PSNR per image averaged over images, and the perplexity and usage of the code histogram over
the whole held-out set. ``cimpt tokenizer eval CHECKPOINT [key=value ...]`` calls
:func:`evaluate_tokenizer_command`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image, ImageDraw
from torchvision.utils import make_grid

from cimpt.atomic import write_json, write_png
from cimpt.errors import CimptError
from cimpt.models.modes import eval_mode
from cimpt.tokenizers.base import ImageTokenizer
from cimpt.tokenizers.load import load_tokenizer
from cimpt.tokenizers.metrics import batch_psnr, codebook_stats, colourfulness

if TYPE_CHECKING:
    from cimpt.config import DataConfig


def _skipped(batch: dict[str, Any]) -> int:
    skipped = batch.get("skipped", 0)
    if isinstance(skipped, (list, tuple)):
        return len(skipped)
    return int(torch.as_tensor(skipped).sum())


@torch.no_grad()
def evaluate_tokenizer(
    tok: ImageTokenizer, loader: Iterable[dict[str, Any]], device: torch.device | str
) -> dict[str, float]:
    """PSNR (mean over images), perplexity and usage (histogram over the whole set), and
    the share of colour kept.

    ``loader`` yields dicts with "x" ``[B, 3, H, W]`` in [0, 1] and "skipped" (images that
    could not be read). Returns {"psnr", "perplexity", "usage", "colour_kept", "n_images",
    "skipped"}. ``colour_kept`` is the summed colourfulness of the reconstructions over that
    of the originals (a ratio of sums, so near-grey images cannot blow it up): 1 keeps the
    colour, 0.5 halves it (washed out towards grey); NaN for an all-grey set.
    """
    counts = torch.zeros(tok.vocab_size, dtype=torch.long, device=device)
    psnr_sum, n_images, n_skipped = 0.0, 0, 0
    colour_recon, colour_orig = 0.0, 0.0
    with eval_mode(tok):
        for batch in loader:
            n_skipped += _skipped(batch)
            x = batch["x"].to(device, non_blocking=True)
            if x.shape[0] == 0:
                continue
            ids = tok.encode(x)
            recon = tok.decode(ids)
            psnr_sum += float(batch_psnr(recon, x).sum())
            colour_recon += float(colourfulness(recon.clamp(0, 1)).sum())
            colour_orig += float(colourfulness(x).sum())
            n_images += x.shape[0]
            counts += torch.bincount(ids.flatten(), minlength=tok.vocab_size)
    if n_images == 0:
        raise CimptError("tokenizer evaluation found no images in the held-out set")
    stats = codebook_stats(counts)
    return {
        "psnr": psnr_sum / n_images,
        "perplexity": float(stats["perplexity"]),
        "usage": float(stats["usage"]),
        "colour_kept": colour_recon / colour_orig if colour_orig > 0 else float("nan"),
        "n_images": n_images,
        "skipped": n_skipped,
    }


def save_reconstruction_figure(
    images: torch.Tensor, recons: torch.Tensor, path: str | Path, n: int = 16
) -> Path:
    """Write a PNG grid of pairs original | reconstruction (4 pairs per row), each column
    titled ("original", "recon") in a strip above the grid.

    ``images`` and ``recons``: ``[B, 3, H, W]`` in [0, 1]; the first ``min(n, B)`` are shown.
    The file is written atomically (temporary file in the same folder, then rename).
    """
    path = Path(path)
    k = min(n, images.shape[0])
    if k == 0:
        raise CimptError("no images to draw in the reconstruction figure")
    pairs = torch.stack([images[:k].float().cpu(), recons[:k].float().cpu()], 1)  # [k,2,3,H,W]
    cols = min(8, 2 * k)
    grid = make_grid(pairs.flatten(0, 1).clamp(0, 1), nrow=cols, padding=2, pad_value=1)
    array = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    body = Image.fromarray(array)
    header = 14
    canvas = Image.new("RGB", (body.width, body.height + header), (255, 255, 255))
    canvas.paste(body, (0, header))
    draw = ImageDraw.Draw(canvas)
    step = images.shape[-1] + 2  # one tile and its padding
    for c in range(cols):
        draw.text((2 + c * step, 1), "original" if c % 2 == 0 else "recon", fill=(0, 0, 0))
    return write_png(path, canvas)


def _find_run_config(checkpoint: Path) -> Path | None:
    """The ``config.yaml`` of the run the checkpoint belongs to, if any.

    Looked for in the checkpoint itself (a run dir), its folder (``run/tokenizer.safetensors``
    or ``run/checkpoints``) and two levels up (``run/checkpoints/step_N``).
    """
    base = checkpoint if checkpoint.is_dir() else checkpoint.parent
    for folder in (base, base.parent, base.parent.parent):
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    return None


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _overrides_key(overrides: Sequence[str], key: str) -> bool:
    return any(item.split("=", 1)[0].strip() == key for item in overrides)


#: Verdict thresholds (PSNR in dB, share of codes used, share of colour kept). At 32-64 px a
#: tokenizer below 18 dB decodes colourless blurs, so every corrupted image is one
#: (docs/BENCHMARKS.md); 22 dB keeps the main edges. Colour is measured on its own
#: (``colour_kept``, the reconstructions' colourfulness over the originals'), because PSNR
#: barely sees it: a 19.9 dB CIFAR tokenizer kept 39 % and its reconstructions look grey.
GOOD_PSNR, WEAK_PSNR = 22.0, 18.0
GOOD_USAGE, WEAK_USAGE = 0.25, 0.10
GOOD_COLOUR, WEAK_COLOUR = 0.75, 0.5


def verdict(psnr: float, usage: float, colour_kept: float | None = None) -> str:
    """``good``, ``usable`` or ``weak``, with the reason, from the thresholds above
    (``colour_kept`` None or NaN: not judged, e.g. an all-grey held-out set)."""
    why = []
    if psnr < GOOD_PSNR:
        why.append(f"PSNR {psnr:.1f} dB < {GOOD_PSNR:.0f}")
    if usage < GOOD_USAGE:
        why.append(f"{100 * usage:.0f} % of the codes used < {100 * GOOD_USAGE:.0f} %")
    kept = colour_kept if colour_kept is not None and math.isfinite(colour_kept) else 1.0
    if kept < GOOD_COLOUR:
        why.append(f"{100 * kept:.0f} % of the colour kept < {100 * GOOD_COLOUR:.0f} %")
    if not why:
        return "good"
    weak = psnr < WEAK_PSNR or usage < WEAK_USAGE or kept < WEAK_COLOUR
    advice = "train longer or wider (tokenizer.width), or check tokenizer.downsample"
    return f"{'weak' if weak else 'usable'}: {'; '.join(why)}; {advice}"


def _print_table(results: dict[str, Any]) -> None:
    rows = [
        ("PSNR", f"{results['psnr']:.2f} dB"),
        ("perplexity", f"{results['perplexity']:.1f} / {results['vocab_size']}"),
        ("usage", f"{100 * results['usage']:.1f} %"),
        ("colour kept", f"{100 * results['colour_kept']:.0f} %"),
        ("images", str(results["n_images"])),
    ]
    for name, value in rows:
        print(f"{name:<12}{value:>16}")
    skipped = f", {results['skipped']} unreadable skipped" if results.get("skipped") else ""
    print(f"data: {results['data']}{skipped}")
    print(f"verdict: {results['verdict']}")


def eval_data_name(d: DataConfig) -> str:
    """What the ``val`` split is: ``data.val_path``, or the test split it stands in for."""
    if d.val_path:
        return f"data.val_path={d.val_path}"
    return f"the test split of data.path={d.path}"


def evaluate_tokenizer_command(checkpoint: str, overrides: list[str]) -> dict[str, Any]:
    """``cimpt tokenizer eval CHECKPOINT [key=value ...]``.

    Loads the tokenizer, rebuilds the run config (the run's ``config.yaml`` when there is one,
    else the defaults) with the overrides, evaluates on the ``val`` split at the tokenizer
    resolution, prints a table and writes ``tokenizer_eval.json`` and ``tokenizer_recon.png``
    into ``run.dir`` when an override sets it, else next to the checkpoint.
    """
    from cimpt.config import load_config, token_grid, typed
    from cimpt.data import EvalTransform, ImageCollate, build_dataset, build_loader

    ckpt = Path(checkpoint).expanduser()
    tok = load_tokenizer(ckpt)
    cfg = typed(load_config(_find_run_config(ckpt), overrides))
    device = _resolve_device(cfg.train.device)
    tok.to(device)
    # The loaded tokenizer, not the config, decides pixels per token.
    size = cfg.tokenizer.img_size or token_grid(cfg) * tok.downsample
    dataset = build_dataset(cfg, "val", EvalTransform(size))
    loader = build_loader(
        dataset,
        batch_size=cfg.train.batch_size,
        num_workers=cfg.data.num_workers,
        collate_fn=ImageCollate(),
        sampler=None,
        seed=cfg.seed,
        drop_last=False,
        shuffle=False,  # a fixed order gives the same figure every time
    )
    results: dict[str, Any] = evaluate_tokenizer(tok, loader, device)
    results.update(checkpoint=str(ckpt), img_size=size, vocab_size=tok.vocab_size)
    results["data"] = eval_data_name(cfg.data)
    results["verdict"] = verdict(
        float(results["psnr"]), float(results["usage"]), float(results["colour_kept"])
    )
    if _overrides_key(overrides, "run.dir"):
        out_dir = Path(cfg.run.dir).expanduser()
    else:
        out_dir = ckpt if ckpt.is_dir() else ckpt.parent
    first = next(iter(loader))["x"][:16].to(device)
    with torch.no_grad():
        recon = tok.decode(tok.encode(first))
    save_reconstruction_figure(first, recon, out_dir / "tokenizer_recon.png")
    write_json(out_dir / "tokenizer_eval.json", results)
    _print_table(results)
    print(f"wrote {out_dir / 'tokenizer_eval.json'} and {out_dir / 'tokenizer_recon.png'}")
    return results
