"""The Keras side of ``core.tripwire``: a callback that, at a due step, checks that every update
since the last check went through ``wrap_optimizer``'s allreduce and that every rank holds the same
trainable weights."""

from __future__ import annotations

import keras
import numpy as np

from ..core import tripwire
from ._context import current
from .optimizer import POLICY

CAUSES = tripwire.Causes(
    not_reduced="Keras did not call Optimizer._clip_gradients on its update path, where hvdtrain "
    "averages the gradients (a Keras release outside the tested range, or an optimizer overriding "
    "apply())",
    diverged="a rank's update did not use the averaged gradients, or a rank changed its weights "
    "outside the optimizer",
)


class Tripwire(keras.callbacks.Callback):
    """Every rank must have it (``callbacks()`` puts it there). Reading the optimizer's counters
    costs a few hundred microseconds, so it reads them only when a check may be due: each batch
    makes at most one update, so it counts batches down to the next due step. The proof that the
    allreduce ran: it counted one allreduce per update since the last check (``reductions``,
    counted inside the traced step)."""

    def __init__(self):
        super().__init__()
        self.every = tripwire.interval()
        self._since = (0, 0)  # (updates, allreduces) at the last check or the start of training
        self._batches_left = 1

    def on_train_begin(self, logs=None):
        self._since = self._counters()
        self._batches_left = self._until_due(self._since[0])

    def on_train_batch_end(self, batch, logs=None):
        self._batches_left -= 1
        if self._batches_left > 0:
            return
        step, reductions = self._counters()
        if step != self._since[0] and tripwire.due(step, self.every) and current().size > 1:
            variables = self.model.trainable_variables
            values = [
                np.asarray(keras.ops.convert_to_numpy(v), dtype=np.float64) for v in variables
            ]
            updates, allreduces = step - self._since[0], reductions - self._since[1]
            tripwire.check(
                current(),
                step,
                allreduces == updates,
                [float(v.sum()) for v in values],
                [float(np.abs(v).sum()) for v in values],
                [v.path for v in variables],
                CAUSES,
            )
            self._since = (step, reductions)
        self._batches_left = self._until_due(step)

    def _until_due(self, step: int) -> int:
        due = tripwire.next_due(step, self.every)
        return due - step if due is not None else 2**62

    def _counters(self) -> tuple[int, int]:
        optimizer = self.model.optimizer
        policy = getattr(optimizer, POLICY, None)
        return (
            int(keras.ops.convert_to_numpy(optimizer.iterations)),
            int(policy.reductions.numpy()) if policy is not None else 0,
        )
