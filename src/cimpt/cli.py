"""The ``cimpt`` command line.

Every command exits 0 on success; on bad input it exits 2 with one line on stderr that starts
with ``error:``. A training run stopped by SIGINT or SIGTERM writes a checkpoint and exits with
128 + the signal (130 for Ctrl-C, 143 for SIGTERM); a second signal quits at once. Heavy
imports (torch, timm) happen inside the command functions so that ``cimpt --help`` is instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NoReturn

from cimpt.errors import CimptError

if TYPE_CHECKING:
    from cimpt.engine.loop import FitResult

Handler = Callable[[argparse.Namespace], object]


def _tokenizer_train(args: argparse.Namespace) -> FitResult:
    from cimpt.config import load_config
    from cimpt.tokenizers.train import train_tokenizer

    return train_tokenizer(load_config(args.config, args.overrides))


def _tokenizer_eval(args: argparse.Namespace) -> None:
    from cimpt.tokenizers.evaluate import evaluate_tokenizer_command

    evaluate_tokenizer_command(args.checkpoint, args.overrides)


def _tokenizer_convert(args: argparse.Namespace) -> None:
    from cimpt.tokenizers.dalle_io import convert_dalle_pickles

    out = convert_dalle_pickles(args.encoder, args.decoder, args.out)
    print(f"wrote {out}")


def _pretrain(args: argparse.Namespace) -> FitResult:
    from cimpt.config import load_config
    from cimpt.pretrain import pretrain

    return pretrain(load_config(args.config, args.overrides))


def _finetune(args: argparse.Namespace) -> FitResult:
    from cimpt.config import load_config
    from cimpt.eval.finetune import finetune

    return finetune(load_config(args.config, args.overrides))


def _segment(args: argparse.Namespace) -> FitResult:
    from cimpt.config import load_config
    from cimpt.seg.task import segment

    return segment(load_config(args.config, args.overrides))


def _linprobe(args: argparse.Namespace) -> FitResult:
    from cimpt.config import load_config
    from cimpt.eval.linprobe import linprobe

    return linprobe(load_config(args.config, args.overrides))


def _knn(args: argparse.Namespace) -> None:
    from cimpt.config import load_config
    from cimpt.eval.knn import knn_command

    knn_command(load_config(args.config, args.overrides))


def _demo(args: argparse.Namespace) -> None:
    from cimpt.demo import run_demo

    run_demo(args.overrides)


def _visualize(args: argparse.Namespace) -> None:
    from cimpt.visualize import visualize_command

    print(f"wrote {visualize_command(args.checkpoint, args.overrides, args.out, args.n)}")


def _export(args: argparse.Namespace) -> None:
    from cimpt.export import export_command

    print(f"wrote {export_command(args.checkpoint, args.out)}")


class _Parser(argparse.ArgumentParser):
    """argparse, but usage mistakes are one ``error:`` line too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def _add_config_command(
    sub: argparse._SubParsersAction, name: str, help_: str, fn: Handler
) -> None:
    p = sub.add_parser(name, help=help_)
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.batch_size=64")
    p.set_defaults(func=fn)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cimpt",
        description="Corrupted Image Modeling pre-training (Fang et al., ICLR 2023).",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("demo", help="offline quick start on bundled photographs (a few minutes)")
    p.add_argument("overrides", nargs="*", help="key=value overrides for both demo stages")
    p.set_defaults(func=_demo)
    _add_config_command(sub, "pretrain", "CIM pre-training", _pretrain)
    _add_config_command(
        sub,
        "finetune",
        "fine-tune an enhancer (init.checkpoint) or train it from scratch on labelled images",
        _finetune,
    )
    _add_config_command(
        sub, "segment", "fine-tune an enhancer for semantic segmentation (UperNet)", _segment
    )
    _add_config_command(
        sub, "linprobe", "linear probe (BatchNorm + linear) on frozen features", _linprobe
    )
    _add_config_command(sub, "knn", "cosine kNN accuracy of frozen features (k=20, 200)", _knn)
    p = sub.add_parser("visualize", help="figure: original | recon | mask | corrupted | output")
    p.add_argument("checkpoint", help="pre-training checkpoint dir or run dir")
    p.add_argument("overrides", nargs="*", help="key=value overrides (e.g. data.path=...)")
    p.add_argument("--out", default="", help="output PNG (default: run.dir/figures/)")
    p.add_argument("--n", type=int, default=8, help="number of images")
    p.set_defaults(func=_visualize)
    p = sub.add_parser("export", help="the enhancer alone, loadable into the timm model")
    p.add_argument("checkpoint", help="pre-training checkpoint dir or run dir")
    p.add_argument("out", help="output .safetensors")
    p.set_defaults(func=_export)

    tok = sub.add_parser("tokenizer", help="train, evaluate or convert an image tokenizer")
    tok_sub = tok.add_subparsers(dest="tokenizer_command", required=True)
    _add_config_command(tok_sub, "train", "train a VQ-VAE tokenizer", _tokenizer_train)
    p = tok_sub.add_parser("eval", help="reconstruction PSNR and codebook usage on held-out images")
    p.add_argument("checkpoint", help="tokenizer .safetensors file, checkpoint dir or run dir")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.val_path=...")
    p.set_defaults(func=_tokenizer_eval)
    p = tok_sub.add_parser(
        "convert-dalle", help="convert DALL-E encoder.pkl/decoder.pkl to one safetensors file"
    )
    p.add_argument("encoder", help="encoder.pkl")
    p.add_argument("decoder", help="decoder.pkl")
    p.add_argument("out", help="output .safetensors")
    p.set_defaults(func=_tokenizer_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except CimptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    if result is None:
        return 0
    # A run stopped by a signal checkpointed and ends with 128 + signal (130, 143), not 0.
    from cimpt.engine.loop import FitResult, exit_status

    return exit_status(result) if isinstance(result, FitResult) else 0


if __name__ == "__main__":
    sys.exit(main())
