"""``callbacks()``: what ``model.fit`` needs to train data-parallel, in the order it needs it.

Horovod's own Keras callbacks, on hvdtrain's build, are made of the same pieces
(``horovod_callbacks``): one broadcast, one metric average, one tripwire.
"""

from __future__ import annotations

import horovod.tensorflow as hvd
import keras

from ..core.guards import UnsupportedError, check_finite
from . import zero
from ._context import current
from .optimizer import OPTIONS
from .tripwire import Tripwire


def broadcast_variables(variables, root_rank: int = 0) -> None:
    """Overwrite ``variables`` (Keras or TF variables) with ``root_rank``'s values: Horovod's own
    ``broadcast_variables``, which takes Keras 3 variables on hvdtrain's build."""
    hvd.broadcast_variables(list(variables), root_rank)


def optimizer_variables(model: keras.Model, optimizer) -> list:
    """The optimizer's variables, slots included: a Keras 3 optimizer is built on the model's
    trainable variables first (it has none until its first step). Keras 2-style optimizers'
    ``variables()`` method also works (Horovod's elastic state calls this for both)."""
    if callable(optimizer.variables):
        return optimizer.variables()
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    return list(optimizer.variables)


def broadcast_model(
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer | None = None,
    root_rank: int = 0,
    local=(),
) -> None:
    """Give every rank ``root_rank``'s weights and optimizer state, optimizer slots included.

    ``optimizer`` defaults to the compiled one; custom training loops call this once before the
    first step. ``model.weights`` leaves out seed-generator state, so dropout still differs by rank.
    ``local``: variables each rank keeps its own (Horovod's ``local_variables``).
    """
    optimizer = optimizer if optimizer is not None else getattr(model, "optimizer", None)
    variables = list(model.weights)
    if optimizer is not None:
        slots = optimizer_variables(model, optimizer)
        # a sharded state has one owner per shard: nothing to send
        if zero.sharding_of(optimizer) is None:
            variables += slots
    kept = {id(v) for v in local}
    broadcast_variables([v for v in variables if id(v) not in kept], root_rank)


class BroadcastState(keras.callbacks.Callback):
    """At the start of training, every rank takes rank 0's model and optimizer state."""

    def on_train_begin(self, logs=None):
        # The same model on every rank: every rank refuses alike, rank 0 says it in one line.
        if not hasattr(self.model.optimizer, OPTIONS):
            raise UnsupportedError(
                "compile the model with hvdtrain.keras.wrap_optimizer(...): a plain optimizer "
                "would train each rank on its own gradients"
            )
        if self.model.jit_compile:
            raise UnsupportedError(
                "compile the model with jit_compile=False: Horovod's ops have no XLA kernels"
            )
        broadcast_model(self.model)


_COUNT = "hvdtrain.val_count"


class AverageMetrics(keras.callbacks.Callback):
    """Replaces each epoch's logs (training and validation metrics) by their mean over ranks.

    It edits the logs dict in place, so every callback after it, ``History`` and the progress bar
    included, sees the averages. With ``val_count`` (this rank's validation samples, when the
    ranks validate on shards of different sizes) validation metrics are weighted by it, so they
    are the metrics of the whole validation set.
    """

    def __init__(self, val_count: int | None = None):
        super().__init__()
        self.val_count = val_count

    def on_epoch_end(self, epoch, logs=None):
        if not logs:
            return
        if self.val_count is None:
            logs.update(current().average(logs))
            return
        weight = {k: self.val_count if k.startswith("val_") else 1 for k in logs}
        means = current().average(
            {**{k: float(v) * weight[k] for k, v in logs.items()}, _COUNT: self.val_count}
        )
        logs.update({k: means[k] / (means[_COUNT] if k.startswith("val_") else 1) for k in logs})


class StopOnNonFinite(keras.callbacks.Callback):
    """Stops training with ``NonFiniteLossError`` when the rank-averaged loss is NaN or infinite.

    Keras's ``TerminateOnNaN`` looks at one rank's loss: that rank stops and the others wait for
    it in the next allreduce. This one checks the averaged epoch logs (it comes after
    ``AverageMetrics``, and before a checkpoint callback could save diverged weights) and, every
    ``every`` batches, the epoch's running loss averaged with one small allreduce; every rank
    stops at the same step. Each rank runs the same number of batches (``shard``), so the checks
    pair up.
    """

    def __init__(self, every: int = 100):
        super().__init__()
        self.every = every

    def on_train_batch_end(self, batch, logs=None):
        if logs and "loss" in logs and (batch + 1) % self.every == 0:
            loss = float(keras.ops.convert_to_numpy(logs["loss"]))
            check_finite(current().average({"loss": loss}), self._step())

    def on_epoch_end(self, epoch, logs=None):
        if logs:
            check_finite(logs, self._step())

    def _step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())


class _QuietProgbar(keras.callbacks.ProgbarLogger):
    """A progress bar forced to ``verbose=0``; its presence stops Keras adding a printing one."""

    def set_params(self, params):
        super().set_params({**params, "verbose": 0})


def callbacks(val_count: int | None = None) -> list[keras.callbacks.Callback]:
    """Callbacks to put first in ``model.fit(callbacks=[*hk.callbacks(), ...])``.

    Broadcast of rank 0's state, then metric averaging (before any later callback reads the logs),
    then the stop on a NaN or infinite averaged loss, then the data-parallel tripwire
    (``core.tripwire``); on ranks other than 0, a silent progress bar, so only rank 0 prints
    whatever ``verbose`` says. LR warmup needs no callback: the wrapped optimizer applies it, in
    custom loops too. ``val_count``: see ``AverageMetrics``.
    """
    found = [BroadcastState(), AverageMetrics(val_count), StopOnNonFinite(), Tripwire()]
    if not current().is_main:
        found.append(_QuietProgbar())
    return found
