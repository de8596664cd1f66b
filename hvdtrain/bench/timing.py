"""Timed windows shared by every benchmark part.

Contenders take turns window by window, each window in a rotated order, so machine noise (other
jobs on a shared host) lands on all of them alike. Warm-up runs are not timed; the figure kept is
the median over windows of the time per operation.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

# A contender runs ``iters`` operations and returns the seconds they took.
Contender = Callable[[int], float]


@dataclass(frozen=True)
class Plan:
    warmup: int  # untimed operations per contender before the first window
    windows: int  # timed windows per contender
    iters: int  # operations per window


def timed(operation: Callable[[], object]) -> Contender:
    """A contender that runs ``operation`` back to back and times the whole window."""

    def run(iters: int) -> float:
        start = time.perf_counter()
        for _ in range(iters):
            operation()
        return time.perf_counter() - start

    return run


def compete(contenders: dict[str, Contender], plan: Plan, barrier: Callable[[], None]) -> dict[str, float]:
    """Median seconds per operation of each contender; ``barrier`` lines the ranks up per window."""
    return {name: statistics.median(values) for name, values in windows(contenders, plan, barrier).items()}


def windows(contenders: dict[str, Contender], plan: Plan, barrier: Callable[[], None]) -> dict[str, list[float]]:
    """Seconds per operation of each contender in each window, windows in order (so contenders can
    be compared window by window: the same minutes of machine noise)."""
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
