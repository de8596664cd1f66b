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
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as err:
        for line in str(err).splitlines():  # several problems: one line each
            print(f"hvdtrain: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
