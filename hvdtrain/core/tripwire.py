"""Data parallelism cannot switch off silently: a check after the first optimizer step and at an
interval that every rank averaged its gradients and holds the same weights.

Both adapters make an optimizer data-parallel by hooking framework internals (Keras's
``Optimizer._clip_gradients``, Horovod's ``DistributedOptimizer.synchronize``). If a framework
release stops calling the hook, or a step skips it, every rank trains on its own gradients: the
job runs, the loss falls, and it is not data-parallel. So the adapter's allreduce path marks each
update as *reduced*, and at a due step every rank shares (one small allgather) that mark and, per
trainable tensor, the sum of its values and of their magnitudes. The job stops with one line
naming the step and the likely cause when a rank updated without the allreduce, or when a rank's
weights differ from rank 0's (beyond float rounding: tolerance ``RTOL`` of the tensor's magnitude,
so ranks on different CPU or GPU models, whose last bits may differ, are not stopped).

The schedule depends on the step alone (``due``), so every rank checks at the same steps, after a
resume or an elastic restart too. ``HVDTRAIN_TRIPWIRE_EVERY`` sets the interval (default
``DEFAULT_EVERY``; 0: after the first step only). A sharded update path calls the same ``check``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from .context import Context
from .guards import UserError

EVERY_ENV = "HVDTRAIN_TRIPWIRE_EVERY"
DEFAULT_EVERY = 1000
RTOL = 1e-6


class DataParallelError(UserError, RuntimeError):
    """Ranks did not average their gradients, or hold different weights."""

    collective = True


@dataclass(frozen=True)
class Causes:
    """What most likely broke, in the adapter's words: an update made without the allreduce, and
    weights that drifted apart although every update was reduced."""

    not_reduced: str
    diverged: str


def interval(environ=os.environ) -> int:
    text = environ.get(EVERY_ENV, "").strip()
    if not text:
        return DEFAULT_EVERY
    try:
        value = int(text)
        if value >= 0:
            return value
    except ValueError:
        pass
    raise UserError(
        f"{EVERY_ENV} must be a whole number of steps >= 0 (0: check after the first step only), "
        f"got {text!r}",
        collective=True,
    )


def due(step: int, every: int) -> bool:
    """Check after optimizer step ``step`` (1-based count of updates)?"""
    return step == 1 or (every > 0 and step % every == 0)


def next_due(step: int, every: int) -> int | None:
    """The first step after ``step`` with a check; None when no further check comes."""
    if step < 1:
        return 1
    return (step // every + 1) * every if every > 0 else None


def check(
    ctx: Context,
    step: int,
    reduced: bool,
    sums: Sequence[float],
    magnitudes: Sequence[float],
    names: Sequence[str],
    causes: Causes,
) -> None:
    """Collective, at a step ``due`` on every rank: ``reduced``, whether this rank's last
    update went through the allreduce; ``sums``/``magnitudes``, per trainable tensor, the
    sum of its values and of their absolute values. ``DataParallelError`` on every rank
    alike when something is wrong."""
    rows = ctx.gather([float(reduced), *sums, *magnitudes])
    count = len(sums)
    unreduced = [rank for rank, row in enumerate(rows) if not row[0]]
    if unreduced:
        raise DataParallelError(
            f"data parallelism is off at step {step}: {_ranks(unreduced, len(rows))} updated "
            f"the weights without averaging gradients; likely cause: {causes.not_reduced}"
        )
    reference = rows[0]
    for rank, row in enumerate(rows[1:], start=1):
        differing = [
            i
            for i in range(count)
            if abs(row[1 + i] - reference[1 + i]) > RTOL * max(reference[1 + count + i], 1e-30)
        ]
        if differing:
            raise DataParallelError(
                f"data parallelism is off at step {step}: rank {rank} holds different weights from "
                f"rank 0 in {len(differing)} of {count} tensors (first: {names[differing[0]]}); "
                f"likely cause: {causes.diverged}"
            )


def _ranks(ranks: list[int], size: int) -> str:
    if len(ranks) == size:
        return "every rank"
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(map(str, ranks))
