"""Horovod's Keras callbacks on Keras 3, as hvdtrain's build runs them.

``scripts/patch_horovod.py`` binds ``horovod._keras.callbacks``' broadcast and metric-averaging
implementations (behind ``hvd.callbacks.BroadcastGlobalVariablesCallback`` and
``MetricAverageCallback`` of ``horovod.keras`` and ``horovod.tensorflow.keras``) to the classes
here, which are hvdtrain's own callbacks, and makes Horovod's LR schedule and warmup callbacks read
and set the LR through ``learning_rate``/``set_learning_rate`` and ramp by hvdtrain's warmup rule.
"""

from __future__ import annotations

import horovod.tensorflow as hvd
import keras

from ..core import failures
from ..core.lr import warmup_multiplier as _warmup_rule
from . import internals
from ._context import attached
from .callbacks import AverageMetrics, broadcast_model
from .optimizer import POLICY
from .tripwire import Tripwire

failures.install()


class _Tripwire(Tripwire):
    """hvdtrain's tripwire. A step whose optimizer has no hvdtrain hook (a custom ``train_step``
    reducing through ``DistributedGradientTape``) counts as reduced: only its
    weights are compared."""

    def _counters(self) -> tuple[int, int]:
        step, reductions = super()._counters()
        return step, reductions if hasattr(self.model.optimizer, POLICY) else step


class BroadcastGlobalVariablesCallbackImpl:
    """Every rank takes ``root_rank``'s weights and optimizer state when training starts (after the
    first step, as upstream, for a model built by it), then checks at hvdtrain's tripwire steps
    that the updates were averaged and the ranks hold the same weights."""

    def __init__(self, backend, root_rank, device="", *args):
        super().__init__(*args)
        self.root_rank, self.device = root_rank, device
        self.broadcast_done = False
        self._local_vars: list = []
        self._tripwire = _Tripwire()

    def register_local_var(self, var) -> None:
        """``var`` keeps each rank's own value (Horovod's ``local_variables``)."""
        self._local_vars.append(var)

    def set_model(self, model) -> None:
        super().set_model(model)
        self._tripwire.set_model(model)

    def on_train_begin(self, logs=None):
        attached()
        if self.model.built and not self.broadcast_done:
            self._broadcast()
        self._tripwire.on_train_begin(logs)

    def on_train_batch_end(self, batch, logs=None):
        if not self.broadcast_done:
            self._broadcast()
        self._tripwire.on_train_batch_end(batch, logs)

    def _broadcast(self) -> None:
        broadcast_model(self.model, root_rank=self.root_rank, local=self._local_vars)
        self.broadcast_done = True


class MetricAverageCallbackImpl(AverageMetrics):
    """Each epoch's logs replaced by their mean over ranks (hvdtrain's ``AverageMetrics``)."""

    def __init__(self, backend, device="", *args):
        super().__init__()

    def on_epoch_end(self, epoch, logs=None):
        attached()
        super().on_epoch_end(epoch, logs)


def learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def set_learning_rate(
    optimizer: keras.optimizers.Optimizer, new_lr: float, momentum_correction: bool
) -> None:
    """Set the LR; with ``momentum_correction`` (Goyal et al.) rescale the momentum by new/old LR
    for the next update. Keras 3 bakes ``momentum`` into the traced step as a constant, so the
    velocity slots are rescaled instead: ``m' = momentum * (r m) - lr g`` is the same update."""
    old_lr = learning_rate(optimizer)
    optimizer.learning_rate = new_lr
    if momentum_correction and getattr(optimizer, "momentum", 0) and old_lr and optimizer.built:
        for slot in _velocities(optimizer):
            slot.assign(slot * (new_lr / old_lr))


def _velocities(optimizer: keras.optimizers.Optimizer) -> list:
    if isinstance(optimizer, keras.optimizers.SGD) and not optimizer.nesterov:
        return optimizer.momentums
    if isinstance(optimizer, keras.optimizers.RMSprop):
        return internals.rmsprop_momentums(optimizer)
    raise ValueError(
        f"momentum_correction cannot be reproduced for {type(optimizer).__name__}"
        f"{'(nesterov=True)' if getattr(optimizer, 'nesterov', False) else ''} on Keras 3 (its "
        "momentum is a constant of the traced step): pass momentum_correction=False"
    )


def warmup_multiplier(epoch: float, steps_per_epoch: int, warmup_epochs: float) -> float:
    """Horovod's warmup ramp, ``lr/size -> lr`` over ``warmup_epochs``, at fractional ``epoch``
    (``epoch + batch / steps_per_epoch``) for the batch about to run: hvdtrain's rule at that
    batch's 1-based step."""
    step = round(epoch * steps_per_epoch) + 1
    return _warmup_rule(step, warmup_epochs * steps_per_epoch, hvd.size())
