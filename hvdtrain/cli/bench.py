"""``hvdtrain bench``: its flags, checked into the ``bench.runner.Settings`` the benchmark runs with
(a bad value is one ``UsageError`` line before any worker starts)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from ..bench import runner
from ..bench.worker import PARTS
from ..core.errors import UsageError

DEFAULT_SIZES = "4K,16K,64K,256K,1M,4M,16M,64M"
# 200 Mbit/s: at 1 Gbit/s four workers on a 2-core machine are bound by compute, not by the link
# (BENCHMARKS.md, "Across hosts"); a slower link puts the bottleneck back where a cluster has it.
DEFAULT_LINK_RATE = "200mbit"
HOSTS_PARTS = "allreduce,torch"
_SIZE = re.compile(r"^(\d+)([KMG]?)B?$", re.IGNORECASE)
_RATE = re.compile(r"^(\d+(?:\.\d+)?)([kmg]?)bit$")
DESCRIPTION = """Launch the benchmark workers under horovodrun at np=1 and at each np=N, then print
a table and write bench.json and PNG plots to --out. --hosts N runs on N test hosts made for the run
(network namespaces with sshd and a tc rate limit on each host's link; root only), one worker per
host, at np=1..N: bus bandwidth as a fraction of the link rate and the bound the link sets on
training."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="allreduce and training-step benchmarks: hvdtrain vs raw "
        "Horovod vs torch DDP; optimizer-state sharding",
        description=DESCRIPTION,
    )
    add_arguments(parser)
    parser.set_defaults(func=main)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--np",
        default=None,
        help="workers of the multi-worker runs, e.g. 2 or 2,4 (np=1 runs too; "
        "default 2, or 2..N with --hosts N)",
    )
    parser.add_argument(
        "--hosts",
        type=int,
        default=None,
        metavar="N",
        help="run on N test hosts made for the run, one worker each (root; network namespaces)",
    )
    parser.add_argument(
        "--link-rate",
        default=DEFAULT_LINK_RATE,
        metavar="RATE",
        help="each test host's link rate, tc syntax, e.g. 200mbit, 1gbit (default "
        f"{DEFAULT_LINK_RATE})",
    )
    parser.add_argument(
        "--compression",
        choices=("none", "fp16"),
        default="none",
        help="gradient compression of the torch training steps (DDP: its fp16 hook)",
    )
    parser.add_argument(
        "--steps", type=int, default=10, help="training steps per timed window (quick: 3)"
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "gpu"),
        default="cpu",
        help="gpu: one GPU per worker, NCCL for Horovod and torch.distributed",
    )
    parser.add_argument(
        "--sizes", default=DEFAULT_SIZES, help="allreduce sizes, e.g. 4K,1M,64M (binary units)"
    )
    parser.add_argument(
        "--parts",
        default=None,
        help=f"comma-separated subset of {', '.join(PARTS)} (default all; "
        f"{HOSTS_PARTS} with --hosts)",
    )
    parser.add_argument("--fusion", default="200x64K", help="small-tensor fusion case, COUNTxSIZE")
    parser.add_argument(
        "--windows", type=int, default=None, help="timed windows per contender (default 7, quick 3)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="toy models and few iterations: a smoke test"
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the workers, e.g. HOROVOD_CYCLE_TIME=0.5 (repeatable)",
    )
    parser.add_argument(
        "--horovod-defaults",
        action="store_true",
        help="run with Horovod's own defaults instead of hvdtrain's tuned settings",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("bench-results"), help="directory for bench.json and plots"
    )


def parse_size(text: str) -> int:
    match = _SIZE.match(text.strip())
    if not match:
        raise UsageError(f"bad size {text!r}: use bytes or K/M/G units, e.g. 4096, 64K, 16M, 1G")
    value = (
        int(match.group(1))
        * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[match.group(2).upper()]
    )
    if value < 4 or value % 4:
        raise UsageError(
            f"size {text!r} is not a whole number of float32 values (a multiple of 4 bytes)"
        )
    return value


def parse_np(text: str) -> list[int]:
    try:
        counts = sorted({int(n) for n in str(text).split(",")})
    except ValueError:
        raise UsageError(f"bad --np {text!r}: use worker counts, e.g. 2 or 2,4") from None
    if counts[0] < 1:
        raise UsageError(f"--np must be >= 1 (np=1 always runs for scaling), got {text}")
    return counts


def parse_link_rate(text: str) -> float:
    """A ``tc`` rate (``200mbit``, ``1gbit``) in bytes per second
    (tc's units are powers of 1000)."""
    match = _RATE.match(text.strip().lower())
    if not match:
        raise UsageError(f"bad --link-rate {text!r}: use tc's bit rates, e.g. 200mbit, 1gbit")
    return float(match.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[match.group(2)] / 8


def settings(args) -> runner.Settings:
    """The ``bench.runner.Settings`` the flags ask for; ``UsageError`` on a bad value."""
    if args.hosts is not None and args.hosts < 2:
        raise UsageError(f"--hosts must be >= 2, got {args.hosts}")
    if args.hosts is not None and args.np is not None:
        raise UsageError(
            "--np and --hosts exclude each other: --hosts N runs np=1..N, one worker per host"
        )
    if args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")
    counts = parse_np(args.np or "2") if args.hosts is None else list(range(2, args.hosts + 1))
    parts_text = args.parts or (HOSTS_PARTS if args.hosts else ",".join(PARTS))
    parts = [p.strip() for p in parts_text.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise UsageError(
            f"unknown part(s) {', '.join(unknown) or '(none)'}; allowed: {', '.join(PARTS)}"
        )
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    count, _, size = args.fusion.lower().partition("x")
    if not count.isdigit() or int(count) < 1 or not size:
        raise UsageError(f"bad --fusion {args.fusion!r}: use COUNTxSIZE, e.g. 200x64K")
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"bad --env {item!r}: use KEY=VALUE")
        env[key] = value
    if args.horovod_defaults:
        env["HVDTRAIN_HOROVOD_DEFAULTS"] = "0"
    windows = args.windows or (3 if args.quick else 7)
    if windows < 1:
        raise UsageError(f"--windows must be >= 1, got {windows}")
    return runner.Settings(
        np=counts,
        parts=parts,
        sizes=sizes,
        fusion=(int(count), parse_size(size)),
        windows=windows,
        env=env,
        quick=args.quick,
        device=args.device,
        compression=args.compression,
        steps=args.steps,
        hosts=args.hosts,
        link_rate=args.link_rate if args.hosts else None,
        link_Bps=parse_link_rate(args.link_rate) if args.hosts else None,
        out=args.out,
    )


def main(args) -> int:
    return runner.run(settings(args))
