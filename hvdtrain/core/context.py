"""What the core needs to know about the running job, filled in by an adapter's ``init``."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

_current: Context | None = None


@dataclass
class Context:
    """The job as seen from one worker.

    ``broadcast_object``, ``average`` and ``gather`` are the adapter's collectives,
    so framework-free code (tracking, checkpoint policy) can talk to other ranks
    without importing a framework.
    """

    framework: str
    rank: int
    size: int
    local_rank: int
    local_size: int
    device: str
    broadcast_object: Callable[[Any, int], Any] = field(repr=False)
    average: Callable[[Mapping[str, float]], dict[str, float]] = field(repr=False)
    # Every rank's list of floats (the same length on each), in rank order.
    gather: Callable[[Sequence[float]], list[list[float]]] | None = field(default=None, repr=False)
    # Rank, size, local rank, local size as Horovod sees them now (None: a job that cannot change).
    membership: Callable[[], tuple[int, int, int, int]] | None = field(default=None, repr=False)

    def refresh(self) -> None:
        """Re-read rank, size, local rank and local size after Horovod re-initialised (an elastic
        membership change); updated in place, so every holder of this context sees the new job."""
        self.rank, self.size, self.local_rank, self.local_size = self.membership()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith(("cuda", "gpu", "/gpu"))


def threads_per_rank(local_size: int, threads: int | None = None) -> int:
    """CPU threads for one rank: the host's cores split between its ranks (oversubscribing slows
    every rank down), unless the user chose ``threads``."""
    return threads or max(1, (os.cpu_count() or 1) // local_size)


def set_current(ctx: Context) -> Context:
    global _current
    _current = ctx
    return ctx


def current(framework: str | None = None) -> Context:
    """The context made by ``init``; a clear error when ``init`` was not called."""
    if _current is None or (framework is not None and _current.framework != framework):
        module = f"hvdtrain.{framework}" if framework else "hvdtrain.torch / hvdtrain.keras"
        raise ValueError(f"call {module}.init() first: the distributed job is not initialised")
    return _current


def main_process_only(fn: Callable) -> Callable:
    """Run ``fn`` on rank 0 only; other ranks get ``None``. The one place rank gating lives."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not _on_main_process():
            return None
        return fn(*args, **kwargs)

    return wrapper


def _on_main_process() -> bool:
    # A function, not ``_current`` read in ``wrapper``: a wrapper pickled by value (a script's
    # function sent to Spark executors) would carry a copy of ``_current`` from pickling time.
    return _current is None or _current.is_main


@main_process_only
def say_on_main(line: str) -> None:
    """One of hvdtrain's lines (a notice, a warning, an error every rank raised) on stderr, from
    rank 0 only."""
    print(line, file=sys.stderr, flush=True)
