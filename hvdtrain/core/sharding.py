"""How a dataset is split across workers, the same policy for both frameworks.

Every rank must run the same number of steps, or the ranks that finish first leave the
others blocked in an allreduce. With N samples and W workers each rank gets exactly
``samples_per_rank`` samples:

* ``drop_last=False`` (default): ceil(N / W); the index list is padded by wrapping around to
  its start, so every sample is seen at least once and a few twice per epoch (the policy of
  ``torch.utils.data.DistributedSampler``).
* ``drop_last=True``: floor(N / W); up to W - 1 samples are left out of each epoch.

Shuffling uses one seed shared by all ranks plus the epoch, so the ranks' shards never overlap
within an epoch and change from epoch to epoch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .context import Context
from .guards import UserError


class TrainingDataError(UserError, ValueError):
    """Training data that cannot train: empty, or unequal between ranks (decided on every rank's
    count, so every rank raises it alike)."""

    collective = True


def samples_per_rank(num_samples: int, size: int, drop_last: bool = False) -> int:
    if num_samples < size and drop_last:
        raise ValueError(
            f"{num_samples} samples cannot be split across {size} workers with drop_last"
        )
    return num_samples // size if drop_last else math.ceil(num_samples / size)


def shard_indices(
    num_samples: int,
    rank: int,
    size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    epoch: int = 0,
    drop_last: bool = False,
) -> np.ndarray:
    """Indices of the samples rank ``rank`` sees in epoch ``epoch``."""
    if not 0 <= rank < size:
        raise ValueError(f"rank {rank} is outside a job of {size} workers")
    order = (
        np.random.default_rng([seed, epoch]).permutation(num_samples)
        if shuffle
        else np.arange(num_samples)
    )
    per_rank = samples_per_rank(num_samples, size, drop_last)
    total = per_rank * size
    order = np.resize(order, total) if total > num_samples else order[:total]
    return order[rank:total:size]


def check_steps_per_epoch(ctx: Context, count: int, *, caller: str, unit: str, remedy: str) -> None:
    """Collective, before the first step: every rank's epoch must have something to train and as
    many ``unit`` (batches, samples) as every other rank's.

    An empty epoch would "finish" with a zero loss and a checkpoint of untrained weights; unequal
    epochs leave the rank that finishes first gone while the others wait in an allreduce until
    the hang timeout. Both are known from the counts alone, so the job stops before training with
    one line on rank 0 (``TrainingDataError``): ``caller`` names the entry point, ``remedy`` says
    what gives every rank an equal share."""
    counts = [int(row[0]) for row in ctx.gather([count])] if ctx.size > 1 else [count]
    check_not_empty(counts, caller=caller, unit=unit)
    if len(set(counts)) > 1:
        raise TrainingDataError(
            f"{caller}: the ranks have different numbers of {unit} per epoch "
            f"({_by_rank(counts)}); the first to finish would leave the others waiting in an "
            f"allreduce: {remedy}"
        )


def check_not_empty(counts: Sequence[int], *, caller: str, unit: str) -> None:
    """No rank has anything to train (``counts``: every rank's, or the one count of data that is
    the same on every rank): stop before a job that would "finish" with a zero loss."""
    if not any(counts):
        raise TrainingDataError(
            f"{caller}: the training data is empty (0 {unit} on every rank); nothing to train"
        )


def _by_rank(counts: Sequence[int]) -> str:
    return ", ".join(f"rank {rank}: {count}" for rank, count in enumerate(counts))
