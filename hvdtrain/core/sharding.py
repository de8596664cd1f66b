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

import numpy as np


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
