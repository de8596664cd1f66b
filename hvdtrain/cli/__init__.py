"""The ``hvdtrain`` command: argument parsing and dispatch. Each subcommand lives in its own module
of this package with a ``register`` function; the work is done by the library it calls."""

from __future__ import annotations

import argparse
import sys

from ..core.errors import UsageError
from . import bench, doctor, gpucheck, run, testhosts, tracking


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hvdtrain",
        description="Data-parallel training of Keras 3 and PyTorch "
        "models on Horovod, tracked in MLflow.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (doctor, run, tracking, bench, testhosts, gpucheck):
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    try:
        if unknown:
            _refuse_unknown(parser, args.command, unknown)
        return args.func(args)
    except UsageError as err:
        for line in str(err).splitlines():  # several problems: one line each
            print(f"hvdtrain: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _refuse_unknown(parser: argparse.ArgumentParser, command: str, unknown: list[str]) -> None:
    """argparse's own refusal, except for ``run``: there an unknown flag is most often the
    script's, put before the script (``hvdtrain run --epochs 1 train.py``), and the line says so."""
    if command != "run":
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    raise UsageError(
        f"run: unrecognized arguments: {' '.join(unknown)}; "
        f"a script's own flags go after the script: {run.SYNOPSIS}"
    )


if __name__ == "__main__":
    sys.exit(main())
