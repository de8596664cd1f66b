"""``fit``: ``model.fit`` on this rank's shard, with ``callbacks()`` first, elastic when the job is."""
from __future__ import annotations

from typing import Any, Sequence

import keras
import numpy as np

from ..core import elastic
from ..core.elastic import Position
from ..elastic import TrainingState
from .callbacks import callbacks as distributed_callbacks
from .data import shard
from .elastic import run as elastic_run


def fit(model: keras.Model, x: np.ndarray, y: np.ndarray, *, batch_size: int, epochs: int,
        validation_data: tuple[np.ndarray, np.ndarray] | None = None, callbacks: Sequence[keras.callbacks.Callback] = (),
        initial_epoch: int = 0, seed: int = 0, **fit_kwargs: Any) -> keras.callbacks.History:
    """Train a compiled ``model`` on all ranks, each on its shard of ``x``/``y`` (``batch_size`` per rank).

    In elastic mode (``hvdtrain run --elastic``) training survives workers leaving and joining:
    it rolls back to the last epoch end, re-shards the data for the new membership and re-scales
    the LR; an ``MlflowLogger`` among ``callbacks`` logs the new ``world_size`` as training restarts. The returned ``History`` holds rank-averaged
    epoch metrics, as from ``model.fit``.
    """
    def train(position: Position, extra: Sequence[keras.callbacks.Callback] = ()) -> keras.callbacks.History:
        train_x, train_y = shard(x, y, seed=seed)
        validation = None if validation_data is None else shard(*validation_data, shuffle=False)
        return model.fit(train_x, train_y, batch_size=batch_size, epochs=epochs, initial_epoch=position.epoch,
                         validation_data=validation, callbacks=[*distributed_callbacks(), *callbacks, *extra],
                         **fit_kwargs)

    if not elastic.enabled():
        return train(Position(epoch=initial_epoch))

    def attempt(state: TrainingState) -> Position:
        train(state.position, [_Commit(state)])
        return state.position

    position = elastic_run(attempt, model, Position(epoch=initial_epoch), elastic.report_membership())
    history = keras.callbacks.History()
    history.set_model(model)
    history.epoch = [entry["epoch"] for entry in position.epochs]
    for entry in position.epochs:
        for name, value in entry.items():
            if name != "epoch":
                history.history.setdefault(name, []).append(value)
    return history


class _Commit(keras.callbacks.Callback):
    """At each epoch end: record the (averaged) logs and the position, then commit the elastic state."""

    def __init__(self, state: TrainingState):
        super().__init__()
        self.state = state

    def on_epoch_end(self, epoch, logs=None):
        position = self.state.position
        position.epochs.append({"epoch": epoch, **{k: float(v) for k, v in (logs or {}).items()}})
        position.epoch, position.step = epoch + 1, int(self.model.optimizer.iterations.numpy())
        self.state.commit()
