"""ZeRO stage 1 partition plan: which slice of the flattened parameters each rank updates.

With optimizer-state sharding every rank still holds all parameters, but keeps optimizer state
(Adam's two moments, SGD's momentum) for, and updates, only its own partition; the updated
partitions are then all-gathered. The plan here is the framework-free part, shared by the adapters:

* Parameters are flattened, in the optimizer's order, into buckets: one run of parameters of one
  param group and one kind (dtype and device) of at most ``bucket_bytes`` (a larger parameter gets
  a bucket of its own). A bucket is the unit of the reduce-scatter and the all-gather.
* Each bucket is padded with zeros to a multiple of the world size and cut into ``size`` equal
  contiguous shards, rank r owning shard r. So every rank holds the same number of elements
  whatever the world size and parameter count: ``ceil(numel / size)`` per bucket, the padding
  being at most ``size - 1`` elements per bucket. Parameters may straddle shards.

A parameter's place is identified by ``index``, its position in the optimizer's state_dict
numbering (params of all groups, in order), so a consolidated state maps back to it.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass

# A bucket's reduce-scatter needs a receive buffer of its size and stage 2 holds a couple of
# buckets of gradients, so buckets are small; large enough that a step is a few dozen
# collectives. Both adapters use it.
DEFAULT_BUCKET_BYTES = 16 << 20
ELASTIC_REFUSAL = (
    "shard_optimizer_state=True is not supported in elastic mode: a worker that leaves takes its "
    "shard of the optimizer state with it; run without --elastic, or unsharded"
)


@dataclass(frozen=True)
class ParamSpec:
    """What the plan needs to know about one trainable parameter."""

    index: int  # position in the optimizer's state_dict numbering
    numel: int
    itemsize: int  # bytes per element
    kind: Hashable = ""  # parameters of different kinds (dtype, device) never share a bucket


@dataclass(frozen=True)
class Slot:
    """A parameter's elements ``[offset, offset + numel)`` of its bucket's flat buffer."""

    index: int
    offset: int
    numel: int


@dataclass(frozen=True)
class Piece:
    """Elements ``[start, stop)`` of parameter ``index``, at ``shard_offset`` in a rank's shard."""

    index: int
    start: int
    stop: int
    shard_offset: int


@dataclass(frozen=True)
class Bucket:
    group: int
    slots: tuple[Slot, ...]
    size: int  # world size

    @property
    def numel(self) -> int:
        return sum(slot.numel for slot in self.slots)

    @property
    def shard_numel(self) -> int:
        """Elements of each rank's shard (all equal)."""
        return math.ceil(self.numel / self.size)

    @property
    def padded_numel(self) -> int:
        return self.shard_numel * self.size

    def shard_range(self, rank: int) -> tuple[int, int]:
        """``[start, stop)`` of rank ``rank``'s shard in the padded flat buffer."""
        return rank * self.shard_numel, (rank + 1) * self.shard_numel

    def pieces(self, rank: int) -> Iterator[Piece]:
        """The parts of parameters that lie in rank ``rank``'s shard (padding excluded)."""
        low, high = self.shard_range(rank)
        for slot in self.slots:
            start, stop = max(low, slot.offset), min(high, slot.offset + slot.numel)
            if start < stop:
                yield Piece(slot.index, start - slot.offset, stop - slot.offset, start - low)


@dataclass(frozen=True)
class PartitionPlan:
    size: int
    buckets: tuple[Bucket, ...]

    def shard_numel(self) -> int:
        """Elements this rank (every rank) updates and keeps optimizer state for."""
        return sum(bucket.shard_numel for bucket in self.buckets)

    def numel(self) -> int:
        return sum(bucket.numel for bucket in self.buckets)


def plan(
    groups: Sequence[Sequence[ParamSpec]], size: int, bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> PartitionPlan:
    """The buckets of ``groups`` (the optimizer's param groups, trainable parameters only) for
    ``size`` ranks, ordered by group, then by each kind's first appearance, then parameter order."""
    if size < 1:
        raise ValueError(f"world size must be >= 1, got {size}")
    if bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be >= 1, got {bucket_bytes}")
    buckets = []
    for group_index, group in enumerate(groups):
        by_kind: dict[Hashable, list[ParamSpec]] = {}
        for spec in group:
            if spec.numel > 0:
                by_kind.setdefault(spec.kind, []).append(spec)
        for specs in by_kind.values():
            for run in _runs(specs, bucket_bytes):
                offsets = [0]
                for spec in run[:-1]:
                    offsets.append(offsets[-1] + spec.numel)
                buckets.append(
                    Bucket(
                        group_index,
                        tuple(Slot(s.index, o, s.numel) for s, o in zip(run, offsets)),
                        size,
                    )
                )
    return PartitionPlan(size, tuple(buckets))


def _runs(specs: list[ParamSpec], bucket_bytes: int) -> Iterator[list[ParamSpec]]:
    """Consecutive parameters of at most ``bucket_bytes`` together (one larger parameter alone)."""
    run: list[ParamSpec] = []
    used = 0
    for spec in specs:
        nbytes = spec.numel * spec.itemsize
        if run and used + nbytes > bucket_bytes:
            yield run
            run, used = [], 0
        run.append(spec)
        used += nbytes
    if run:
        yield run
