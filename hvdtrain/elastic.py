"""Horovod's elastic ``State`` over an adapter's ``Snapshot`` and the training ``Position``: the
Horovod-bound half of elastic training, shared by both adapters (the policy is ``core.elastic``)."""
from __future__ import annotations

import copy
from dataclasses import asdict
from typing import Any, Callable

from horovod.common.elastic import State

from .core.context import Context
from .core.elastic import Position, Snapshot


class TrainingState(State):
    """Horovod elastic ``State`` over a ``Snapshot`` and a ``Position``.

    ``commit()`` (Horovod's) saves both and raises ``HostsUpdatedInterrupt`` when hosts were
    added or removed, which restarts the training function on the new membership.
    """

    def __init__(self, ctx: Context, snapshot: Snapshot, position: Position,
                 on_membership: Callable[[Position, int, int], None] | None = None):
        super().__init__(bcast_object=lambda obj: ctx.broadcast_object(obj, 0), get_rank=lambda: ctx.rank)
        self.ctx, self.snapshot, self.position = ctx, snapshot, position
        self._on_membership = on_membership
        self._saved: tuple[Any, Position] | None = None
        self.save()

    def save(self) -> None:
        self._saved = (self.snapshot.capture(), copy.deepcopy(self.position))

    def restore(self) -> None:
        saved, position = self._saved
        self.snapshot.apply(saved)
        self.position = copy.deepcopy(position)

    def sync(self) -> None:
        self.snapshot.broadcast()
        self.position = Position(**self.ctx.broadcast_object(asdict(self.position), 0))
        self.save()

    def reset(self) -> None:
        old_size = self.ctx.size
        self.ctx.refresh()
        self.snapshot.rescale()
        if self._on_membership is not None:
            self._on_membership(self.position, old_size, self.ctx.size)
