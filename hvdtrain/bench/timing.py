"""Timed windows shared by every benchmark part.

Contenders take turns window by window, each window in a rotated order, so machine noise (other
jobs on a shared host) lands on all of them alike. Warm-up runs are not timed. Every window's time
per operation is kept: the report takes the median over windows and the spread (min, max), and
takes a ratio of two contenders window by window (they ran back to back), so noise shows as spread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

# A contender runs ``iters`` operations and returns the seconds they took.
Contender = Callable[[int], float]


@dataclass(frozen=True)
class Plan:
    warmup: int  # untimed operations per contender before the first window
    windows: int  # timed windows per contender
    iters: int  # operations per window


def timed(operation: Callable[[], object], sync: Callable[[], object] | None = None) -> Contender:
    """A contender that runs ``operation`` back to back and times the whole window; ``sync`` waits
    for work still queued on a GPU before the clock stops (GPU ops return before they finish)."""

    def run(iters: int) -> float:
        start = time.perf_counter()
        for _ in range(iters):
            operation()
        if sync is not None:
            sync()
        return time.perf_counter() - start

    return run


def windows(
    contenders: dict[str, Contender], plan: Plan, barrier: Callable[[], None]
) -> dict[str, list[float]]:
    """Seconds per operation of each contender in each window, in window order (window k of two
    contenders ran back to back, so their ratio in window k is a like-for-like figure); ``barrier``
    lines the ranks up before each window."""
    names = list(contenders)
    for name in names:
        contenders[name](plan.warmup)
    per_op: dict[str, list[float]] = {name: [] for name in names}
    for window in range(plan.windows):
        shift = window % len(names)
        for name in names[shift:] + names[:shift]:
            barrier()
            per_op[name].append(contenders[name](plan.iters) / plan.iters)
    return per_op
