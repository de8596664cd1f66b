"""Horovod's elastic ``State`` over an adapter's ``Snapshot`` and the training ``Position``: the
Horovod-bound half of elastic training, shared by both adapters (the policy is ``core.elastic``).

Each rollback and each membership change is checked, not trusted: after a rollback the model and
optimizer state must be the committed one, after a sync every rank must hold rank 0's (digests of
every tensor's bytes), or the job stops with one line.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np
from horovod.common.elastic import State

from .core.context import Context
from .core.elastic import Position, Snapshot
from .core.guards import UserError


class ElasticStateError(UserError, RuntimeError):
    """A rollback or a membership change left the model or optimizer state wrong."""


def digest(state: Any) -> str:
    """A digest of a ``Snapshot.capture()``: every array's bytes, every other value's repr, dict
    entries in key order (ranks may build the same dict in another order)."""
    hashed = hashlib.blake2b(digest_size=16)

    def feed(value: Any) -> None:
        if isinstance(value, dict):
            for key in sorted(value, key=repr):
                hashed.update(repr(key).encode())
                feed(value[key])
        elif isinstance(value, (list, tuple)):
            for item in value:
                feed(item)
        elif hasattr(value, "numpy") or isinstance(value, np.ndarray):
            array = np.ascontiguousarray(
                value if isinstance(value, np.ndarray) else _as_numpy(value)
            )
            hashed.update(f"{array.dtype}{array.shape}".encode())
            hashed.update(array.tobytes())
        else:
            hashed.update(repr(value).encode())

    feed(state)
    return hashed.hexdigest()


def _as_numpy(tensor: Any) -> np.ndarray:
    try:
        return tensor.numpy()
    except TypeError:  # a torch bfloat16 tensor: numpy has no such type; float32 holds it exactly
        return tensor.float().numpy()


class TrainingState(State):
    """Horovod elastic ``State`` over a ``Snapshot`` and a ``Position``.

    ``commit()`` (Horovod's) saves both and raises ``HostsUpdatedInterrupt`` when hosts were
    added or removed, which restarts the training function on the new membership.
    """

    def __init__(
        self,
        ctx: Context,
        snapshot: Snapshot,
        position: Position,
        on_membership: Callable[[Position, int, int], None] | None = None,
    ):
        super().__init__(
            bcast_object=lambda obj: ctx.broadcast_object(obj, 0), get_rank=lambda: ctx.rank
        )
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
        if digest(self.snapshot.capture()) != digest(saved):
            raise ElasticStateError(
                f"rolling back to step {position.step} did not restore the committed model and "
                f"optimizer state on rank {self.ctx.rank}"
            )

    def sync(self) -> None:
        self.snapshot.broadcast()
        self.position = Position(**self.ctx.broadcast_object(asdict(self.position), 0))
        self.save()
        mine = digest(self._saved[0])
        differs = mine != self.ctx.broadcast_object(mine, 0)
        if self.ctx.average({"hvdtrain.state_differs": float(differs)})["hvdtrain.state_differs"]:
            raise ElasticStateError(
                f"after the workers changed ({self.ctx.size} now), not every rank holds rank 0's "
                f"model and optimizer state at step {self.position.step}",
                collective=True,
            )

    def reset(self) -> None:
        old_size = self.ctx.size
        self.ctx.refresh()
        self.snapshot.rescale()
        if self._on_membership is not None:
            self._on_membership(self.position, old_size, self.ctx.size)
