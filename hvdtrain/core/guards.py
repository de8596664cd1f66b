"""What stops a job on bad input, and how it says so: one line, not a page of tracebacks per rank.

``UserError`` marks an error the user can fix from its message alone (a bad checkpoint, bad
data, a diverged loss); uncaught, it prints as a single ``hvdtrain: error: ...`` line
(``failures.install``, called by each adapter's ``init``). An error that every rank raises at
the same point (``collective``: decided on rank-averaged values or broadcast from rank 0) is
printed by rank 0 only; one that depends on the host only (``per_host``: the installed versions)
by each host's first local rank; any other by the rank that raised it. Set
``HVDTRAIN_TRACEBACK=1`` to get the full traceback back.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping

from .context import say_on_main


class UserError(Exception):
    """An error whose message is the whole story; ``collective``: every rank raises it alike;
    ``per_host``: every rank of a host raises it alike (its first local rank prints it)."""

    collective = False
    per_host = False

    def __init__(self, message: str, *, collective: bool | None = None):
        super().__init__(message)
        if collective is not None:
            self.collective = collective


class UnsupportedError(UserError, ValueError):
    """A combination of features hvdtrain refuses at start, on every rank alike."""

    collective = True


class NonFiniteLossError(UserError, RuntimeError):
    """The rank-averaged loss (or another metric) became NaN or infinite."""

    collective = True


def check_finite(metrics: Mapping[str, float], step: int) -> None:
    """Raise ``NonFiniteLossError`` if any metric is NaN or infinite.

    Call it with rank-averaged values only, so that every rank stops at the same step: a check
    on one rank's own loss would stop that rank and leave the others waiting in a collective.
    Call it before saving a checkpoint, so that no checkpoint holds the diverged weights.
    """
    bad = {name: value for name, value in metrics.items() if not math.isfinite(value)}
    if bad:
        name = "loss" if "loss" in bad else sorted(bad)[0]
        raise NonFiniteLossError(
            f"{name} is {bad[name]} at step {step}; stopping: lower the learning rate "
            f"or check the data"
        )


def report(error: UserError) -> None:
    """Print ``error`` as its one line: by rank 0 when every rank raised it, by each host's first
    local rank when each rank of a host did, else by this rank."""
    line = f"hvdtrain: error: {error}"
    if error.collective:
        say_on_main(line)
    elif not error.per_host or os.environ.get("HOROVOD_LOCAL_RANK", "0") == "0":
        _print(line)


def _print(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
