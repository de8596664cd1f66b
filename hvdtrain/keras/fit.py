"""``fit``: Keras training with the same contract as ``hvdtrain.torch.fit``: checkpoints every epoch
and every ``checkpoint_every`` steps, resume at the exact batch on any world size, tracking, and
elastic restarts.

hvdtrain owns each epoch's order: every epoch every rank takes its share of a permutation drawn
from ``seed`` and the epoch (``core.sharding``, the rule ``hvdtrain.torch.distributed_loader``
follows too), and ``model.fit`` runs one epoch at a time on it, unshuffled. So a checkpoint taken
mid-epoch records how many batches of that order were trained, and a resumed or restarted job
skips exactly those. The callbacks see the epochs of these ``model.fit`` calls as one training
(``on_train_begin`` and ``on_train_end`` once).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np

from ..core import elastic, plan
from ..core.elastic import Position
from ..core.guards import UnsupportedError, check_finite
from ..core.sharding import (
    TrainingDataError,
    check_not_empty,
    check_steps_per_epoch,
    samples_per_rank,
    shard_indices,
)
from ..core.tracker import TrainingTracker
from ..tracking.params import training_params
from ._context import current
from .callbacks import callbacks as distributed_callbacks
from .checkpoint import load_checkpoint, save_checkpoint
from .elastic import run as elastic_run
from .optimizer import OPTIONS, base_learning_rate
from .tracking import MlflowLogger

# model.fit arguments hk.fit decides itself.
OWNED = (
    "shuffle",
    "initial_epoch",
    "steps_per_epoch",
    "validation_split",
    "epochs",
    "batch_size",
    "callbacks",
)


def fit(
    model: keras.Model,
    x: Any,
    y: Any = None,
    *,
    batch_size: int,
    epochs: int,
    sample_weight: np.ndarray | None = None,
    validation_data: tuple | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    tracker: TrainingTracker | None = None,
    log_every: int = 10,
    config: dict | None = None,
    progress: bool = True,
    commit_every: int | None = None,
    seed: int = 0,
    drop_last: bool = False,
    sharded: bool = False,
    **fit_kwargs: Any,
) -> keras.callbacks.History:
    """Train a compiled ``model`` (its optimizer from ``wrap_optimizer``) on all ranks;
    ``batch_size`` is per rank, ``x``/``y``/``sample_weight`` are the whole training set (arrays, or
    dicts/lists of arrays), the same on every rank.

    Logs the rank-averaged batch logs, LR and global samples/s every ``log_every`` steps and the
    epoch logs (``epoch_<metric>``, ``val_<metric>``) to ``tracker``, with the data-parallel params
    of the run (``tracking.training_params``: world size, scaled LR, global batch size...);
    checkpoints every epoch and every ``checkpoint_every`` steps into ``checkpoint_dir``; with
    ``resume`` continues from its newest valid checkpoint, at the batch it was taken, on any
    world size. Validation metrics are averaged over the ranks' shards weighted by their sizes
    (every sample once). Only rank 0 shows progress. In elastic mode
    (``hvdtrain run --elastic``) training survives workers leaving and joining: it rolls back to
    the last commit (each epoch, each checkpoint and every ``commit_every`` steps), re-shards
    and re-scales the LR. Returns the rank-averaged epoch metrics of this run as a Keras
    ``History``, whose ``samples_trained`` counts the samples (all ranks) this call trained.
    Other keyword arguments go to ``model.fit``.

    ``sharded=True``: ``x``/``y`` are already this rank's equal share (``hvdtrain.spark.read_shard``
    on Spark); each epoch shuffles within it. Not with elastic training (the shares are fixed).
    """
    if epochs < 1:
        raise UnsupportedError(f"epochs must be >= 1, got {epochs}")
    owned = sorted(set(fit_kwargs) & set(OWNED))
    if owned:
        raise UnsupportedError(
            f"hk.fit decides {', '.join(owned)} itself (hvdtrain owns each epoch's order); "
            f"remove {'it' if len(owned) == 1 else 'them'}"
        )
    fit_kwargs.setdefault("verbose", 1 if progress else 0)
    data = _Data(x, y, sample_weight, same_on_every_rank=not sharded)
    if sharded:
        _check_shares(data.size)
    else:  # the same arrays on every rank
        check_not_empty([data.size], caller="hk.fit", unit="samples")
    loop = _Loop(
        model,
        data,
        batch_size,
        epochs,
        validation_data,
        list(callbacks),
        checkpoint_dir,
        checkpoint_every,
        tracker,
        log_every,
        config,
        commit_every,
        seed,
        drop_last,
        fit_kwargs,
        sharded,
    )
    loop.build()
    options = getattr(model.optimizer, OPTIONS, None)
    if tracker is not None and options is not None:
        tracker.log_params(
            training_params(
                current(),
                options,
                base_lr=_as_written(base_learning_rate(model.optimizer)),
                per_rank_batch_size=batch_size,
            )
        )
    position = elastic.starting_position(
        current(), checkpoint_dir, resume, lambda: load_checkpoint(checkpoint_dir, model)
    )
    nothing_left = elastic.say_if_nothing_left(position, epochs, checkpoint_dir)
    ctx = current()
    share = data.size if sharded else samples_per_rank(data.size, ctx.size, drop_last)
    plan.say_if_unexpected(
        ctx,
        options,
        caller="hk.fit",
        batch_size=batch_size,
        samples_per_rank=share,
        batches_per_epoch=-(-share // batch_size),
        epochs=epochs,
    )
    if tracker is not None and not nothing_left:
        tracker.log_membership(position.step, current().size)
    if not elastic.enabled():
        loop.train(position, commit=lambda: None)
    else:
        position = elastic_run(
            lambda state: loop.train(state.position, commit=state.commit) or state.position,
            model,
            position,
            elastic.report_membership(tracker),
        )
    return loop.history(position)


def _check_shares(count: int) -> None:
    """Pre-sharded data: every rank must hold as many samples, or the ranks would run different
    numbers of steps and the first to finish would leave the others waiting in an allreduce."""
    if elastic.enabled():
        raise UnsupportedError(
            "sharded=True cannot be used with elastic training: the shares are fixed at start"
        )
    check_steps_per_epoch(
        current(),
        count,
        caller="hk.fit(sharded=True)",
        unit="samples",
        remedy="give every rank an equal share (hvdtrain.spark.read_shard does)",
    )


class _Data:
    """The training arrays, indexed together (any nesting of arrays Keras accepts)."""

    def __init__(self, x, y, sample_weight, same_on_every_rank: bool = True):
        self.parts = (x, y, sample_weight)
        lengths = {len(a) for a in keras.tree.flatten(self.parts) if a is not None}
        if len(lengths) != 1:
            raise TrainingDataError(
                "hk.fit: x, y and sample_weight must have the same number of samples, got "
                f"{sorted(lengths)}",
                collective=same_on_every_rank,  # the same arrays everywhere: rank 0 says it
            )
        self.size = lengths.pop()

    def take(self, index: np.ndarray) -> tuple:
        return keras.tree.map_structure(
            lambda a: None if a is None else np.asarray(a)[index], self.parts
        )

    def first(self):
        return keras.tree.map_structure(lambda a: np.asarray(a)[:1], self.parts[0])


class _Loop:
    """``fit``'s epochs; ``train`` starts at a ``Position`` and calls ``commit`` where a restart
    may resume from (a no-op outside elastic mode)."""

    def __init__(
        self,
        model,
        data,
        batch_size,
        epochs,
        validation_data,
        callbacks,
        checkpoint_dir,
        checkpoint_every,
        tracker,
        log_every,
        config,
        commit_every,
        seed,
        drop_last,
        fit_kwargs,
        sharded,
    ):
        if batch_size < 1:
            raise UnsupportedError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.data, self.batch_size, self.epochs = model, data, batch_size, epochs
        self.samples_trained = 0  # all ranks' samples this call trained
        self.validation_data, self.callbacks = validation_data, callbacks
        self.checkpoint_dir, self.checkpoint_every, self.config = (
            checkpoint_dir,
            checkpoint_every,
            config,
        )
        self.tracker, self.log_every, self.commit_every = tracker, log_every, commit_every
        self.seed, self.drop_last, self.fit_kwargs = seed, drop_last, fit_kwargs
        self.sharded = sharded

    def build(self) -> None:
        """Every weight exists before the optimizer is built (when rank 0's state is broadcast or a
        checkpoint loaded). One forward pass on one sample, always: a subclassed model that adds a
        weight in ``__init__`` reads as built while its layers have no weights yet."""
        self.model(self.data.first())

    def train(self, position: Position, commit: Callable[[], None]) -> None:
        ctx = current()
        validation, val_count = self._validation()
        progress = _Progress(self, position, commit)
        inner = [*distributed_callbacks(val_count=val_count), progress, *self.callbacks]
        if self.tracker is not None:  # the world size is logged by fit and at each elastic change
            logger = MlflowLogger(
                self.tracker, self.log_every, self.batch_size, log_membership=False
            )
            inner.insert(len(inner) - len(self.callbacks), logger)
        # A progress bar must stay visible to Keras, or it adds its own: rank 0's counts all epochs.
        bars = [cb for cb in inner if isinstance(cb, keras.callbacks.ProgbarLogger)] or [
            _Progbar(self.epochs)
        ]
        training = _OneTraining([cb for cb in inner if cb not in bars])
        stopped = False  # a callback (EarlyStopping) set model.stop_training
        while position.epoch < self.epochs and not stopped:
            epoch = position.epoch
            # a shard: shuffled within
            rank, size = (0, 1) if self.sharded else (ctx.rank, ctx.size)
            index = shard_indices(
                self.data.size, rank, size, seed=self.seed, epoch=epoch, drop_last=self.drop_last
            )
            progress.skip = position.batches_done(
                self.batch_size * ctx.size, -(-len(index) // self.batch_size)
            )
            x, y, sample_weight = self.data.take(index[progress.skip * self.batch_size :])
            self.model.fit(
                x,
                y,
                sample_weight=sample_weight,
                batch_size=self.batch_size,
                epochs=epoch + 1,
                initial_epoch=epoch,
                shuffle=False,
                validation_data=validation,
                callbacks=[*bars, training],
                **self.fit_kwargs,
            )
            stopped = self.model.stop_training
            # every rank an equal share
            self.samples_trained += max(len(index) - progress.skip * self.batch_size, 0) * ctx.size
        training.finish({})

    def _validation(self) -> tuple[tuple | None, int | None]:
        """This rank's every size-th validation sample
        (each sample once over the ranks), and how many."""
        if self.validation_data is None:
            return None, None
        ctx = current()
        shard = keras.tree.map_structure(
            lambda a: None if a is None else np.asarray(a)[ctx.rank :: ctx.size],
            tuple(self.validation_data),
        )
        return shard, len(keras.tree.flatten(shard)[0])

    def checkpoint(self, position: Position) -> None:
        """Collective: rank 0 saves while the others wait with it (``save_checkpoint``)."""
        if self.checkpoint_dir is not None:
            save_checkpoint(
                self.checkpoint_dir,
                self.model,
                step=position.step,
                epoch=position.epoch,
                config=self.config,
                extra={"epoch_samples": position.epoch_samples},
            )

    def history(self, position: Position) -> keras.callbacks.History:
        history = keras.callbacks.History()
        history.set_model(self.model)
        history.epoch = [entry["epoch"] - 1 for entry in position.epochs]
        for entry in position.epochs:
            for name, value in entry.items():
                if name != "epoch":
                    history.history.setdefault(name, []).append(value)
        # 0 for a resumed job with nothing left to train (ht.fit's History has the same field)
        history.samples_trained = self.samples_trained
        self.model.history = history
        return history


class _Progress(keras.callbacks.Callback):
    """Keeps the ``Position`` (step, samples of the epoch, epochs done), and checkpoints and
    commits where ``fit`` says."""

    def __init__(self, loop: _Loop, position: Position, commit: Callable[[], None]):
        super().__init__()
        self.loop, self.position, self.commit = loop, position, commit
        self.skip = 0  # batches of this epoch trained before a resume or restart

    def on_train_batch_end(self, batch, logs=None):
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        position, loop = self.position, self.loop
        if step == position.step:
            return  # a micro-batch of an accumulated update
        position.step = step
        position.epoch_samples = (self.skip + batch + 1) * loop.batch_size * current().size
        checkpoint = bool(loop.checkpoint_every) and step % loop.checkpoint_every == 0
        if checkpoint:
            loss = float(keras.ops.convert_to_numpy((logs or {}).get("loss", 0.0)))
            # never checkpoint diverged weights
            check_finite(current().average({"loss": loss}), step)
            loop.checkpoint(position)
        if checkpoint or (loop.commit_every and step % loop.commit_every == 0):
            self.commit()

    def on_epoch_end(self, epoch, logs=None):
        position = self.position
        position.epochs.append(
            {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
        )
        position.epoch, position.epoch_samples = epoch + 1, 0
        self.loop.checkpoint(position)
        self.commit()


class _Progbar(keras.callbacks.ProgbarLogger):
    """Keras's progress bar, numbering the epochs of the whole ``fit`` ("Epoch 3/4"), not those
    of the one-epoch ``model.fit`` call it is shown in."""

    def __init__(self, epochs: int):
        super().__init__()
        self.total = epochs

    def set_params(self, params):
        super().set_params({**params, "epochs": self.total})


class _OneTraining(keras.callbacks.Callback):
    """Callbacks that see several one-epoch ``model.fit`` calls as one training: ``on_train_begin``
    at the first call only, ``on_train_end`` at ``finish``; everything else passes through."""

    def __init__(self, callbacks: list[keras.callbacks.Callback]):
        super().__init__()
        self.callbacks, self._begun = callbacks, False

    def set_model(self, model):
        super().set_model(model)
        for callback in self.callbacks:
            callback.set_model(model)

    def set_params(self, params):
        super().set_params(params)
        for callback in self.callbacks:
            callback.set_params(params)

    def on_train_begin(self, logs=None):
        if not self._begun:
            self._begun = True
            self._each("on_train_begin", logs)

    def on_train_end(self, logs=None):
        pass  # the epochs go on in the next model.fit call

    def finish(self, logs) -> None:
        if self._begun:
            self._each("on_train_end", logs)

    def _each(self, method: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, method)(*args)

    def on_epoch_begin(self, epoch, logs=None):
        self._each("on_epoch_begin", epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._each("on_epoch_end", epoch, logs)

    def on_train_batch_begin(self, batch, logs=None):
        self._each("on_train_batch_begin", batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self._each("on_train_batch_end", batch, logs)

    def on_test_begin(self, logs=None):
        self._each("on_test_begin", logs)

    def on_test_end(self, logs=None):
        self._each("on_test_end", logs)

    def on_test_batch_begin(self, batch, logs=None):
        self._each("on_test_batch_begin", batch, logs)

    def on_test_batch_end(self, batch, logs=None):
        self._each("on_test_batch_end", batch, logs)


def _as_written(lr: float | None) -> float | None:
    """A float32 LR as the user wrote it (its shortest repr): 0.0003, not 0.0003000000142492354."""
    return None if lr is None else float(str(np.float32(lr)))
