"""Sharding numpy arrays and ``tf.data`` datasets by rank, with the core's equal-steps policy."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from ..core.sharding import samples_per_rank, shard_indices
from ._context import current


def shard(
    *arrays: np.ndarray,
    shuffle: bool = True,
    seed: int = 0,
    epoch: int = 0,
    drop_last: bool = False,
) -> np.ndarray | tuple[np.ndarray, ...]:
    """This rank's share of ``arrays`` (same length, indexed together), like torch's sampler.

    Every rank gets the same number of samples, so ``model.fit`` runs the same number of steps
    everywhere. ``seed`` must be the same on all ranks; pass a new ``epoch`` to reshuffle.
    """
    lengths = {len(a) for a in arrays}
    if len(lengths) != 1:
        raise ValueError(
            f"shard needs one or more arrays of the same length, got lengths {sorted(lengths)}"
        )
    ctx = current()
    index = shard_indices(
        lengths.pop(),
        ctx.rank,
        ctx.size,
        shuffle=shuffle,
        seed=seed,
        epoch=epoch,
        drop_last=drop_last,
    )
    shards = tuple(np.asarray(a)[index] for a in arrays)
    return shards[0] if len(shards) == 1 else shards


def shard_dataset(
    dataset: tf.data.Dataset, num_samples: int | None = None, drop_last: bool = False
) -> tf.data.Dataset:
    """This rank's share of an unbatched ``dataset``: every ``size``-th element, equal counts.

    Without ``drop_last`` the shorter shards wrap around to the dataset's start, as in ``shard``.
    Shard before shuffling and batching: a shuffle seeded per rank before the shard would make
    shards overlap. ``num_samples`` is needed when the dataset's length is unknown.
    """
    if num_samples is None:
        num_samples = int(dataset.cardinality())
        if num_samples < 0:
            raise ValueError("the dataset's length is unknown (or infinite): pass num_samples")
    ctx = current()
    per_rank = samples_per_rank(num_samples, ctx.size, drop_last)
    return dataset.take(num_samples).repeat().shard(ctx.size, ctx.rank).take(per_rank)
