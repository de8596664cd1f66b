"""The ``hvdtrain`` command: each subcommand lives in its own module with a ``register`` function."""
from __future__ import annotations

import argparse
import sys

from .. import gpucheck
from ..bench import cli as bench_cli
from ..tracking import cli as tracking_cli
from . import doctor, run, testhosts
from .errors import CliError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hvdtrain", description="Data-parallel training of Keras 3 and PyTorch "
                                     "models on Horovod, tracked in MLflow.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (doctor, run, tracking_cli, bench_cli, testhosts, gpucheck):
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CliError as err:
        for line in str(err).splitlines():  # several problems: one line each
            print(f"hvdtrain: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
