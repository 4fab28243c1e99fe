"""The ``nnunet_mtl`` command: one entry point, one module per subcommand.

Each module under ``nnunet_mtl.cli`` that provides a subcommand has ``register(subparsers)``, which adds its
parser and sets ``func`` (called with the parsed args, returns an exit code or None).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from nnunet_mtl import __version__
from nnunet_mtl.errors import NnunetMtlError

SUBCOMMAND_MODULES = ("demo", "convert", "predict", "evaluate", "split", "radiomics", "ablate_guidance", "pretrained",
                      "trainer_dir", "ensemble", "compare", "average_seeds", "drop_masks", "holdout", "recipe",
                      "gallery", "export", "crossval")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnunet_mtl",
        description="Multitask nnU-Net for ultrasound: lesion segmentation + lesion classification.")
    parser.add_argument("--version", action="version", version=f"nnunet_mtl {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(f"nnunet_mtl.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = args.func(args)
    except NnunetMtlError as e:
        print(f"nnunet_mtl {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nnunet_mtl {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (``nnunet_mtl recipe show X | head``): stop quietly, as other tools in
        # a pipe do, and keep Python from printing a second error when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
