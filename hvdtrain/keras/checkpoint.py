"""Checkpoints of a Keras model with its optimizer state,
written by rank 0, resumable on any world size.

The payload is a regular ``.keras`` file; the core's JSON sidecar holds the step, epoch and the
single-worker LR, so a job on a different number of workers re-scales the LR on resume.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import keras

from ..core.checkpoint import (
    CheckpointDir,
    CheckpointError,
    CheckpointMeta,
    CorruptCheckpointError,
    check_writable,
    first_line,
    load_on_main,
)
from ..core.on_main import on_main
from . import zero
from ._context import current
from .callbacks import broadcast_model
from .optimizer import base_learning_rate, set_base_learning_rate

EXTENSION = ".keras"


def save_checkpoint(
    directory: str | os.PathLike,
    model: keras.Model,
    step: int,
    epoch: int = 0,
    config: dict[str, Any] | None = None,
    keep: int = 3,
    extra: dict | None = None,
) -> Path | None:
    """Save ``model`` (weights and optimizer state) as ``directory/step-N.keras``; call it on every
    rank: a sharded optimizer's state is gathered from all of them, then rank 0 writes while the
    others wait with it (``on_main``: a slow save is no hang).

    Keeps the newest ``keep`` checkpoints. Returns the payload path (``None`` on other ranks).
    """
    sharding = zero.sharding_of(model.optimizer)
    if sharding is not None:
        sharding.gather()
    return on_main(
        current(),
        lambda: _write(directory, model, step, epoch, config, keep, extra),
        "saving a checkpoint",
        call="hk.save_checkpoint",
    )


def _write(
    directory: str | os.PathLike,
    model: keras.Model,
    step: int,
    epoch: int,
    config: dict[str, Any] | None,
    keep: int,
    extra: dict | None,
) -> Path:
    base_lr = base_learning_rate(model.optimizer) if model.optimizer is not None else None
    meta = CheckpointMeta(
        step=step,
        epoch=epoch,
        world_size=current().size,
        framework="keras",
        payload="",
        base_lrs=[] if base_lr is None else [base_lr],
        config=dict(config or {}),
        extra=extra or {},
    )
    return CheckpointDir(directory, EXTENSION, keep=keep).save(meta, model.save)


def load_checkpoint(path: str | os.PathLike, model: keras.Model) -> CheckpointMeta | None:
    """Load a checkpoint file, or the newest one in a directory, into ``model`` on every rank.

    ``model`` is built and compiled as for training (with the wrapped optimizer). Rank 0 reads
    the file and broadcasts the state; the LR is re-scaled for this job's world size. Returns the
    checkpoint's metadata, or ``None`` when the directory holds no checkpoint yet; in a directory,
    a corrupt newest checkpoint is skipped with a warning for the previous one. A damaged
    checkpoint, or one of another model, raises ``CheckpointError`` on every rank.
    """

    def restore(payload: Path) -> None:
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        try:
            model.load_weights(payload)
        except (zipfile.BadZipFile, EOFError, OSError) as err:
            raise CorruptCheckpointError(
                f"{payload}: truncated or corrupt checkpoint ({type(err).__name__}: "
                f"{first_line(err)})"
            ) from None
        except Exception as err:
            raise CheckpointError(
                f"{payload}: does not fit this model or optimizer ({type(err).__name__}: "
                f"{first_line(err)})"
            ) from None

    ctx = current()
    meta = load_on_main(ctx, path, EXTENSION, restore)
    if meta is None:
        return None
    broadcast_model(model)
    sharding = zero.sharding_of(model.optimizer)
    if sharding is not None:  # the file's full state, which rank 0 read; each rank keeps its slices
        state = ctx.broadcast_object(sharding.loaded if ctx.is_main else None, 0)
        if state is not None and not ctx.is_main:
            sharding.load(state)
    if meta.base_lrs and model.optimizer is not None:
        set_base_learning_rate(model.optimizer, meta.base_lrs[0])
    return meta


class CheckpointCallback(keras.callbacks.Callback):
    """A resumable checkpoint at the end of every epoch, written by rank 0.

    Every rank must hold it: at the start of training all ranks check together that rank 0 can
    write to ``directory``, so a bad directory stops the job at once rather than after an epoch,
    and the others wait with rank 0 while it saves (``on_main``: a slow save is no hang).
    """

    def __init__(
        self, directory: str | os.PathLike, config: dict[str, Any] | None = None, keep: int = 3
    ):
        super().__init__()
        self.directory, self.config, self.keep = directory, config, keep

    def on_train_begin(self, logs=None):
        check_writable(current(), self.directory)

    def on_epoch_end(self, epoch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        save_checkpoint(
            self.directory,
            self.model,
            step=step,
            epoch=epoch + 1,
            config=self.config,
            keep=self.keep,
        )
