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
CONFIG_HELP = "YAML file, run directory, or a shipped config's name (cimpt config list)"


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
    from pathlib import Path

    from cimpt.config import load_config
    from cimpt.eval.knn import DEFAULT_KNN_DIR, KNN_FILE, knn_command

    cfg = load_config(args.config, args.overrides)
    # A fine-tuning config's (or run's) run.dir is that run's: kNN must not write its
    # config.yaml there. Only run.dir=... or an earlier kNN run directory names the place.
    named = any(o.startswith("run.dir=") for o in args.overrides) or (
        Path(args.config, KNN_FILE).is_file()
    )
    if not named:
        cfg.run.dir = DEFAULT_KNN_DIR
        print(f"note: writing to {DEFAULT_KNN_DIR} (set run.dir=... for another place)")
    knn_command(cfg)


def _demo(args: argparse.Namespace) -> None:
    from cimpt.demo import run_demo

    run_demo(args.overrides)


def _visualize(args: argparse.Namespace) -> None:
    from cimpt.visualize import visualize_command

    print(f"wrote {visualize_command(args.checkpoint, args.overrides, args.out, args.n)}")


def _plot(args: argparse.Namespace) -> None:
    from cimpt.plot import plot_command

    print(f"wrote {plot_command(args.run, args.out, args.keys)}")


def _config_show(args: argparse.Namespace) -> None:
    from cimpt.config import load_config, to_yaml

    print(to_yaml(load_config(args.config, args.overrides)), end="")


def _config_list(args: argparse.Namespace) -> None:
    from cimpt.config import CONFIG_DIR, packaged_configs

    print(f"shipped configs ({CONFIG_DIR}), usable by name, e.g. `cimpt pretrain cifar10_vit`:")
    for name in packaged_configs():
        print(f"  {name}")


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
    p.add_argument("config", help=CONFIG_HELP)
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
    p = sub.add_parser("plot", help="training curves of a run (metrics.jsonl) as one PNG")
    p.add_argument("run", help="run directory")
    p.add_argument("--out", default="", help="output PNG (default: RUN/figures/curves.png)")
    p.add_argument("--keys", nargs="*", default=None, help="metrics to plot (default: the usual)")
    p.set_defaults(func=_plot)
    p = sub.add_parser(
        "export", help="a trained network as the plain timm model (one file or a timm folder)"
    )
    p.add_argument(
        "checkpoint",
        help="pre-training, fine-tuning or linear-probe run or checkpoint, or best.safetensors",
    )
    p.add_argument("out", help="output: NAME.safetensors (one file) or a folder (timm layout)")
    p.set_defaults(func=_export)

    cfg = sub.add_parser("config", help="show a merged config, or list the shipped ones")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True, parser_class=_Parser)
    _add_config_command(cfg_sub, "show", "print the merged config without running", _config_show)
    p = cfg_sub.add_parser("list", help="the configs shipped with cimpt, usable by name")
    p.set_defaults(func=_config_list)

    tok = sub.add_parser("tokenizer", help="train, evaluate or convert an image tokenizer")
    tok_sub = tok.add_subparsers(dest="tokenizer_command", required=True, parser_class=_Parser)
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


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parse_args``, but ``key=value`` overrides may also follow the options.

    argparse fills the ``overrides`` list at the first run of positionals, so in
    ``cimpt visualize RUN --n 3 data.path=...`` the override would be left over; left-over
    ``key=value`` words are appended to the overrides in command-line order instead.
    """
    args, extra = parser.parse_known_args(argv)
    late = [a for a in extra if "=" in a and not a.startswith("-")]
    unknown = [a for a in extra if a not in late]
    if unknown or (late and not isinstance(getattr(args, "overrides", None), list)):
        parser.error(f"unrecognized arguments: {' '.join(unknown or late)}")
    if late:
        args.overrides = [*args.overrides, *late]
    _override_before_positional(parser, args)
    return args


def _is_override(word: str) -> bool:
    key = word.split("=", 1)[0]
    return "=" in word and bool(key) and key.replace(".", "").replace("_", "").isalnum()


def _override_before_positional(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``cimpt pretrain run.dir=x cifar10_vit``: argparse took the override for the config
    (or checkpoint); the first word that is not ``key=value`` is the positional instead."""
    from pathlib import Path

    for name in ("config", "checkpoint"):
        value = getattr(args, name, None)
        overrides = getattr(args, "overrides", None)
        if not isinstance(value, str) or not isinstance(overrides, list):
            continue
        if not _is_override(value) or Path(value).exists():
            continue
        rest = [i for i, word in enumerate(overrides) if not _is_override(word)]
        if not rest:
            parser.error(f"{name}: missing (every word after the command is key=value)")
        setattr(args, name, overrides[rest[0]])
        args.overrides = [value, *overrides[: rest[0]], *overrides[rest[0] + 1 :]]


def _leave_process_group() -> None:
    """Destroy the torchrun process group a training command joined (``Trainer`` joins it),
    whether the command ended, failed or was interrupted: a process that exits with its NCCL
    group alive may leave operations unfinished that other ranks wait on (torch warns about
    it). A command that never imported torch joined no group, and importing torch only to
    find that out would slow down every quick command's exit."""
    if "torch" in sys.modules:
        from cimpt.engine.distributed import cleanup

        cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = _parse(parser, argv)
    try:
        result = args.func(args)
    except CimptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    finally:
        _leave_process_group()
    if result is None:
        return 0
    # A run stopped by a signal checkpointed and ends with 128 + signal (130, 143), not 0.
    from cimpt.engine.loop import FitResult, exit_status

    return exit_status(result) if isinstance(result, FitResult) else 0


if __name__ == "__main__":
    sys.exit(main())
