"""The Keras side of ``core.tripwire``: a callback that, at a due step, checks that the update went
through ``wrap_optimizer``'s allreduce and that every rank holds the same trainable weights."""
from __future__ import annotations

import keras
import numpy as np

from ..core import tripwire
from ._context import current
from .optimizer import POLICY

CAUSES = tripwire.Causes(
    not_reduced="Keras did not call Optimizer._clip_gradients on its update path, where hvdtrain averages the "
                "gradients (a Keras release outside the tested range, or an optimizer overriding apply())",
    diverged="a rank's update did not use the averaged gradients, or a rank changed its weights outside the "
             "optimizer")


class Tripwire(keras.callbacks.Callback):
    """Per batch it reads two counters (optimizer updates and gradient allreduces); at a due step
    it runs the collective check. Every rank must have it (``callbacks()`` puts it there)."""

    def __init__(self):
        super().__init__()
        self.every = tripwire.interval()
        self._before = (0, 0)

    def on_train_batch_begin(self, batch, logs=None):
        self._before = self._counters()

    def on_train_batch_end(self, batch, logs=None):
        (steps_before, reductions_before), (step, reductions) = self._before, self._counters()
        if step == steps_before or current().size == 1 or not tripwire.due(step, self.every):
            return  # a micro-batch of an accumulated update, one worker, or no check due
        variables = self.model.trainable_variables
        values = [np.asarray(keras.ops.convert_to_numpy(v), dtype=np.float64) for v in variables]
        tripwire.check(current(), step, reductions > reductions_before, [float(v.sum()) for v in values],
                       [float(np.abs(v).sum()) for v in values], [v.path for v in variables], CAUSES)

    def _counters(self) -> tuple[int, int]:
        optimizer = self.model.optimizer
        policy = getattr(optimizer, POLICY, None)
        return (int(keras.ops.convert_to_numpy(optimizer.iterations)),
                int(policy.reductions.numpy()) if policy is not None else 0)
