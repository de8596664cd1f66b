"""Command-line flags every training script shares, so both frameworks' examples read alike."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from . import elastic
from .context import Context, main_process_only
from .options import Compression, LRScaling, ReduceOp


def training_parser(
    description: str, *, epochs: int, batch_size: int, lr: float, warmup_steps: int = 0
) -> argparse.ArgumentParser:
    """A parser with the data-parallel flags; ``batch_size`` is per worker."""
    parser = _OneLineErrors(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    group = parser.add_argument_group("training")
    group.add_argument("--epochs", type=_positive, default=epochs)
    group.add_argument(
        "--batch-size", type=_positive, default=batch_size, help="samples per worker per step"
    )
    group.add_argument(
        "--lr", type=_learning_rate, default=lr, help="single-worker learning rate, before scaling"
    )
    group.add_argument(
        "--lr-scaling", choices=[c.value for c in LRScaling], default=LRScaling.LINEAR.value
    )
    group.add_argument("--warmup-steps", type=_non_negative, default=warmup_steps)
    group.add_argument(
        "--compression", choices=[c.value for c in Compression], default=Compression.NONE.value
    )
    group.add_argument("--op", choices=[c.value for c in ReduceOp], default=ReduceOp.AVERAGE.value)
    group.add_argument("--accumulation-steps", type=_positive, default=1)
    group.add_argument(
        "--shard-optimizer-state",
        action="store_true",
        help="ZeRO stage 1: each worker keeps optimizer state for, and updates, 1/N of the "
        "parameters",
    )
    group.add_argument(
        "--shard-gradients",
        action="store_true",
        help="ZeRO stage 2 (with --shard-optimizer-state; PyTorch): each worker also keeps only "
        "1/N of the gradients",
    )
    group.add_argument("--seed", type=int, default=0)
    group = parser.add_argument_group("checkpoints and tracking")
    group.add_argument("--checkpoint-dir", default=None, help="save a checkpoint here every epoch")
    group.add_argument(
        "--checkpoint-every",
        type=_positive,
        default=None,
        metavar="STEPS",
        help="also save a checkpoint every STEPS optimizer steps (default: at each epoch's end "
        "only)",
    )
    group.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest valid checkpoint in --checkpoint-dir, on any number of "
        "workers, and continue its MLflow run; with no checkpoint there yet, start from scratch "
        "(so it can always be passed)",
    )
    group.add_argument(
        "--log-every",
        type=_positive,
        default=10,
        metavar="STEPS",
        help="log the loss, LR and samples/s to MLflow every STEPS optimizer steps",
    )
    group.add_argument(
        "--experiment",
        type=_experiment_name,
        default=None,
        help="MLflow experiment (default: $MLFLOW_EXPERIMENT_NAME)",
    )
    group.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    group.add_argument(
        "--results",
        type=_results_file,
        default=None,
        help="write the final metrics to this JSON file (rank 0)",
    )
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the flags together."""
    args = parser.parse_args(argv)
    if args.shard_gradients and not args.shard_optimizer_state:
        parser.error("--shard-gradients needs --shard-optimizer-state (ZeRO stage 2 builds on 1)")
    for flag, value in (("--resume", args.resume), ("--checkpoint-every", args.checkpoint_every)):
        if value and not args.checkpoint_dir:
            parser.error(f"{flag} needs --checkpoint-dir")
    if args.resume and elastic.enabled():  # loading is a collective a joining worker must not call
        parser.error(
            "--resume is not supported in elastic mode: elastic jobs continue from their in-memory "
            "commits"
        )
    return args


def optimizer_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The flags as keyword arguments of either adapter's ``wrap_optimizer``."""
    return {
        "lr_scaling": args.lr_scaling,
        "warmup_steps": args.warmup_steps,
        "compression": args.compression,
        "op": args.op,
        "accumulation_steps": args.accumulation_steps,
        "shard_optimizer_state": args.shard_optimizer_state,
        "shard_gradients": args.shard_gradients,
    }


def tracking_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The flags as keyword arguments of ``hvdtrain.tracking.tracked``: the config, and the
    checkpoint directory whose run a resumed job continues."""
    return {
        "config": vars(args),
        "experiment": args.experiment,
        "enabled": not args.no_tracking,
        "checkpoint_dir": args.checkpoint_dir,
        "resume": args.resume,
    }


def fit_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The flags as keyword arguments of either adapter's ``fit``: checkpoints, resume, logging."""
    return {
        "checkpoint_dir": args.checkpoint_dir,
        "checkpoint_every": args.checkpoint_every,
        "resume": args.resume,
        "log_every": args.log_every,
        "config": vars(args),
    }


RESULTS_ENV = "HVDTRAIN_RESULTS_FILE"  # set by ``hvdtrain run``: the results its summary shows


@main_process_only
def write_results(
    args: argparse.Namespace,
    ctx: Context,
    *,
    example: str,
    metric_name: str,
    metric: float,
    wall_time_s: float,
    run_id: str | None,
    **extra: Any,
) -> None:
    """Rank 0 writes the job's outcome as JSON: to ``--results FILE`` (read by the demo and tests)
    and to ``$HVDTRAIN_RESULTS_FILE`` (the summary ``hvdtrain run`` prints at the end)."""
    outcome = {
        "framework": ctx.framework,
        "example": example,
        "workers": ctx.size,
        "metric_name": metric_name,
        "metric": metric,
        "wall_time_s": wall_time_s,
        "run_id": run_id,
        **extra,
    }
    for path in filter(None, [args.results, os.environ.get(RESULTS_ENV)]):
        with open(path, "w") as f:
            json.dump(outcome, f, indent=1)


class _OneLineErrors(argparse.ArgumentParser):
    """A bad flag is one line (``prog: error: ...``, exit 2), from rank 0 only under horovodrun,
    instead of argparse's usage block from every rank; ``--help`` shows the usage. Flags are
    parsed before ``init()``, so the rank comes from horovodrun's environment, not the context.

    The other ranks wait up to ``OTHER_RANKS_WAIT_S`` before exiting: horovodrun stops the whole job
    when the first worker exits, and a rank that got there before rank 0 would cut its line off
    (seen under load). Rank 0's exit ends the wait, so a job normally ends as fast as before."""

    OTHER_RANKS_WAIT_S = 10

    def error(self, message: str):
        if os.environ.get("HOROVOD_RANK", "0") == "0":
            print(f"{self.prog}: error: {message}", file=sys.stderr, flush=True)
        else:
            time.sleep(self.OTHER_RANKS_WAIT_S)
        sys.exit(2)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _learning_rate(text: str) -> float:
    """Positive and finite: Keras takes a negative rate and climbs the loss to a finished job
    with exit 0, torch refuses it with a traceback per rank, and a nan rate trains to a nan loss."""
    value = float(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _experiment_name(text: str) -> str:
    """Not blank: MLflow would file the run under its Default experiment without a word."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty name; name the experiment or leave the flag out")
    return text


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _results_file(text: str) -> str:
    """A file that can be written at the end of training, checked before it: a directory or a
    missing parent would otherwise fail once the whole training is done."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(
            f"{text} is a directory; name a file in it, e.g. {path / 'results.json'}"
        )
    if not path.absolute().parent.is_dir():
        raise argparse.ArgumentTypeError(f"{path.parent}: no such directory")
    return text
