"""Sharded data loading with the same number of steps on every rank (policy: core.sharding)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ..core.sharding import samples_per_rank, shard_indices
from ._context import current


def distributed_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = True,
    drop_last: bool = False,
    seed: int = 0,
    **loader_kwargs,
) -> DataLoader:
    """A ``DataLoader`` over this rank's shard of ``dataset``; ``batch_size`` is per rank.

    Every epoch each rank takes its share of a permutation drawn from ``seed`` and the epoch
    (``core.sharding``, the rule ``hvdtrain.keras.fit`` follows too): shards reshuffle across ranks
    from epoch to epoch, and padding (``drop_last=False``) or truncation (``drop_last=True``)
    gives every rank the same sample count, hence the same step count. Call
    ``set_epoch(loader, epoch)`` each epoch (``fit`` does).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sampler = _ShardSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    loader_kwargs.setdefault("pin_memory", current().on_gpu)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, **loader_kwargs)


class _ShardSampler(DistributedSampler):
    """This rank's indices by ``core.sharding``, for the job as it is at each ``set_epoch`` (so a
    loader follows elastic membership changes). A ``DistributedSampler``, so code that calls
    ``set_epoch`` on one keeps working."""

    def __init__(self, dataset: Dataset, **kwargs):
        ctx = current()
        super().__init__(dataset, num_replicas=ctx.size, rank=ctx.rank, **kwargs)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        ctx = current()
        self.num_replicas, self.rank = ctx.size, ctx.rank

    def __iter__(self) -> Iterator[int]:
        return iter(
            shard_indices(
                len(self.dataset),
                self.rank,
                self.num_replicas,
                shuffle=self.shuffle,
                seed=self.seed,
                epoch=self.epoch,
                drop_last=self.drop_last,
            ).tolist()
        )

    def __len__(self) -> int:
        return samples_per_rank(len(self.dataset), self.num_replicas, self.drop_last)


class EvalShard(Sampler[int]):
    """Every ``size``-th index from ``rank`` of the job at iteration time:
    each sample once over ranks."""

    def __init__(self, length: int):
        self.length = length

    def __iter__(self) -> Iterator[int]:
        ctx = current()
        return iter(range(ctx.rank, self.length, ctx.size))

    def __len__(self) -> int:
        ctx = current()
        return len(range(ctx.rank, self.length, ctx.size))


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Reshuffle a ``distributed_loader`` for ``epoch`` (same permutation on every rank)."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)


def to_device(batch, device: str | torch.device):
    """Move a tensor or a (nested) tuple/list/dict of tensors to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch
