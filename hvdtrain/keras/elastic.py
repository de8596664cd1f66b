"""Elastic training for Keras:
the model/optimizer ``Snapshot`` and the restart loop (policy: core.elastic)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import horovod.tensorflow as hvd
import keras
import numpy as np

from ..core.elastic import Position
from ..core.lr import lr_scale_factor
from ..elastic import TrainingState
from ._context import current
from .callbacks import broadcast_model, optimizer_variables
from .optimizer import LR_FACTOR, OPTIONS, base_learning_rate, set_base_learning_rate

T = TypeVar("T")


class KerasSnapshot:
    """The model's weights and its optimizer's variables (slots, iterations, LR) as numpy arrays."""

    def __init__(self, model: keras.Model):
        self.model = model

    def _variables(self) -> list:
        # A worker that joined before its first step builds its optimizer here.
        return [*self.model.weights, *optimizer_variables(self.model, self.model.optimizer)]

    def capture(self) -> list[np.ndarray]:
        return [np.array(v.numpy()) for v in self._variables()]

    def apply(self, saved: list[np.ndarray]) -> None:
        for variable, value in zip(self._variables(), saved):
            variable.assign(value)

    def broadcast(self) -> None:
        broadcast_model(self.model)

    def rescale(self) -> None:
        optimizer, ctx = self.model.optimizer, current()
        base = base_learning_rate(optimizer)
        setattr(
            optimizer,
            LR_FACTOR,
            lr_scale_factor(getattr(optimizer, OPTIONS), ctx.size, ctx.local_size, ctx.on_gpu),
        )
        if base is not None:
            set_base_learning_rate(optimizer, base)
        # The traced step has the world size baked in (no allreduce on 1 worker): trace it again.
        self.model.train_function = None


def run(
    train: Callable[[TrainingState], T],
    model: keras.Model,
    position: Position,
    on_membership: Callable[[Position, int, int], None] | None = None,
) -> T:
    """Call ``train(state)`` until it returns, restarting it from the last commit after each
    membership change: Horovod's own ``hvd.elastic.run``, which on hvdtrain's build recovers from a
    Horovod op failing inside ``model.fit`` (any TensorFlow ``OpError`` naming Horovod)."""
    state = TrainingState(current(), KerasSnapshot(model), position, on_membership)
    return hvd.elastic.run(train)(state)
