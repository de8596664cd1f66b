"""Keras side of MLflow tracking: a callback that feeds the shared tracker from Keras's ``logs``,
and model logging with ``mlflow.keras`` (imported when a model is logged)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import keras
import numpy as np

from ..core.lr import warmup_multiplier
from ..core.on_main import on_main
from ..core.tracker import TrainingTracker
from .optimizer import LR_FACTOR, OPTIONS

if TYPE_CHECKING:
    from ..tracking import Tracker


class MlflowLogger(keras.callbacks.Callback):
    """Log to ``tracker`` every ``log_every`` optimizer steps (at the global step: updates since
    the start of training, ``optimizer.iterations``) the rank-averaged batch logs, the LR and
    global samples/s, and at each epoch's end the rank-averaged epoch logs, validation included.
    At the start of training it logs the world size at the step training starts from. Every rank
    must have it in ``callbacks``.

    The step is the optimizer's own count, restored with a checkpoint, so a resumed job continues
    the run's step axis; with gradient accumulation it counts updates, not micro-batches.
    ``per_rank_batch_size`` enables the samples/s metric (Keras does not tell
    callbacks the batch size).
    """

    def __init__(
        self,
        tracker: TrainingTracker,
        log_every: int = 10,
        per_rank_batch_size: int | None = None,
        log_membership: bool = True,
    ):
        super().__init__()
        if log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {log_every}")
        self.tracker, self.log_every, self.per_rank_batch_size = (
            tracker,
            log_every,
            per_rank_batch_size,
        )
        self.log_membership = log_membership  # False: the caller logs the world size (hk.fit)
        self._step = 0
        self._batches_since_log = 0

    def on_train_begin(self, logs=None):
        self._step = self._iterations()
        if self.log_membership:
            self.tracker.log_membership(self._step, self.tracker.ctx.size)

    def on_train_batch_end(self, batch, logs=None):
        step = self._iterations()
        self._batches_since_log += 1
        if step == self._step:  # a micro-batch of an accumulated step: no update yet
            return
        self._step = step
        if logs and step % self.log_every == 0:
            samples = (
                self._batches_since_log * self.per_rank_batch_size
                if self.per_rank_batch_size
                else None
            )
            self.tracker.log_step(
                step, _floats(logs), lr=self._learning_rate(step), samples=samples
            )
            self._batches_since_log = 0

    def on_epoch_end(self, epoch, logs=None):
        if logs:
            self.tracker.log_epoch(epoch, _floats(logs))

    def _iterations(self) -> int:
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def _learning_rate(self, step: int) -> float:
        """The LR of the update after ``step`` updates, warmup included, as the wrapped optimizer
        applies it (what the torch adapter logs too)."""
        optimizer = self.model.optimizer
        lr = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        options = getattr(optimizer, OPTIONS, None)
        if options is None:
            return lr
        return lr * warmup_multiplier(
            step, options.warmup_steps, getattr(optimizer, LR_FACTOR, 1.0)
        )


def _floats(logs) -> dict[str, float]:
    return {k: float(keras.ops.convert_to_numpy(v)) for k, v in logs.items()}


def log_model(
    tracker: Tracker,
    model: keras.Model,
    input_example: np.ndarray,
    name: str = "model",
    registered_model_name: str | None = None,
) -> str | None:
    """Collective: rank 0 logs ``model`` to the job's run, signature inferred from ``input_example``
    and the model's output on it, while the other ranks wait with it (``on_main``: a long upload
    is no hang). Returns the model URI on rank 0, or None (with a warning) if it could not be
    logged; None on the other ranks."""
    import mlflow.keras

    from ..tracking.models import log_model as log_flavor_model

    def log() -> str | None:
        example = np.asarray(input_example)
        output = np.asarray(model.predict(example, verbose=0))
        return log_flavor_model(
            tracker,
            mlflow.keras,
            "model",
            model,
            example,
            output,
            name=name,
            registered_model_name=registered_model_name,
            save_first=True,
        )

    return on_main(tracker.ctx, log, "logging the model")
