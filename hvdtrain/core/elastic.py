"""Elastic training on Horovod's elastic mode (Gloo), the policy shared by both adapters.

In elastic mode (``hvdtrain run --elastic``) Horovod keeps the job alive when workers leave or
join: the survivors get an error from the next collective, roll back to the last *commit*,
re-form the ring with the new membership, and call the training function again. What must
survive lives in ``TrainingState``: the model and optimizer (an adapter's ``Snapshot``) and the
training ``Position``. After every change the context is refreshed, the LR re-scaled for the new
world size (the global batch is per-rank batch x workers) and the change handed to
``on_membership`` (the tracker logs it). A joining worker takes rank 0's state in ``sync``.
Horovod's ``State`` itself is subclassed outside the core, in ``hvdtrain.elastic``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .checkpoint import CheckpointMeta, check_writable
from .context import Context, main_process_only, say_on_main
from .guards import UserError
from .tracker import TrainingTracker


def enabled() -> bool:
    """True in a worker that ``horovodrun``/``hvdtrain run`` started in elastic mode."""
    return os.environ.get("HOROVOD_ELASTIC") == "1"


@dataclass
class Position:
    """Where training is; the same on every rank after ``sync``."""

    epoch: int = 0
    epoch_samples: int = 0  # global samples of ``epoch`` already trained on
    step: int = 0  # optimizer steps so far
    epochs: list[dict[str, float]] = field(default_factory=list)  # per-epoch metrics so far

    def batches_done(self, global_batch: int, batches_per_epoch: int | None = None) -> int:
        """Batches of the current epoch to skip when it restarts with ``global_batch`` samples a
        step; a position inside a batch (the batch size or the number of workers changed since
        the checkpoint) rounds down, with a warning that some samples are trained twice. With
        ``batches_per_epoch`` (each rank's, this job's), a position past the epoch's
        end is refused (``ResumeError``): the checkpoint was taken on more training data than
        this job has, and skipping would train nothing (Keras) or fail deep in the loop (torch)."""
        done = self.epoch_samples // global_batch
        again = self.epoch_samples - done * global_batch
        if again:
            say_on_main(
                f"hvdtrain: warning: the checkpoint is {self.epoch_samples} samples into epoch "
                f"{self.epoch + 1}, not a whole number of this job's global batches of "
                f"{global_batch} (batch size x workers): {again} samples of it are trained again"
            )
        if batches_per_epoch is not None and done > batches_per_epoch:
            raise ResumeError(
                f"the checkpoint was taken {self.epoch_samples} samples into epoch "
                f"{self.epoch + 1} ({done} steps), but an epoch of this job has "
                f"{batches_per_epoch} step{'' if batches_per_epoch == 1 else 's'}: the training "
                "data shrank since; resume with the data "
                "it was taken with, or from an end-of-epoch checkpoint"
            )
        return done


class ResumeError(UserError, ValueError):
    """A checkpoint's position that this job's data cannot continue from (every rank alike)."""

    collective = True


def starting_position(
    ctx: Context,
    checkpoint_dir: str | os.PathLike | None,
    resume: bool,
    load: Callable[[], CheckpointMeta | None],
) -> Position:
    """Where an adapter's ``fit`` starts (collective): the checkpoint ``load`` restores with
    ``resume``, else the beginning. Outside elastic mode every rank first checks together that
    rank 0 can write checkpoints and holds the directory for this job (``checkpoint.claim``: no
    other job's, no earlier job's checkpoints without ``resume``); in elastic mode neither
    happens, since a joining worker must not call collectives outside the elastic loop and
    elastic jobs continue from their commits."""
    if enabled():
        if resume:
            raise ValueError(
                "resume=True is not supported in elastic mode: elastic jobs continue from their "
                "in-memory commits; resume from checkpoints in a non-elastic job"
            )
    elif checkpoint_dir is not None:
        check_writable(ctx, checkpoint_dir, resume)
    meta = load() if resume and checkpoint_dir is not None else None
    if meta is None:
        return Position()
    return Position(
        epoch=meta.epoch, epoch_samples=meta.extra.get("epoch_samples", 0), step=meta.step
    )


def say_if_nothing_left(position: Position, epochs: int, checkpoint_dir: Any) -> bool:
    """A resumed job whose checkpoint already reached ``epochs`` trains nothing: rank 0 says so
    in one line, rather than a job that "finishes" in silence (a rerun after a crash must still
    exit 0, so a notice, not an error). True then: the caller logs nothing of this job."""
    nothing_left = position.epoch >= epochs
    if nothing_left:
        say_on_main(
            f"hvdtrain: nothing left to train: {checkpoint_dir} is at epoch {position.epoch} "
            f"(step {position.step}) and epochs={epochs}; pass a larger --epochs to train on"
        )
    return nothing_left


class Snapshot(Protocol):
    """An adapter's handle on the model and optimizer (and scheduler)."""

    def capture(self) -> Any:
        """A host-memory copy of their state."""

    def apply(self, saved: Any) -> None:
        """Put a ``capture`` back."""

    def broadcast(self) -> None:
        """Give every rank rank 0's state (collective)."""

    def rescale(self) -> None:
        """Scale the LR for the current world size."""


def report_membership(
    tracker: TrainingTracker | None = None,
) -> Callable[[Position, int, int], None]:
    """What both adapters do after a change: log the new size to ``tracker`` (an
    ``hvdtrain.tracking`` tracker, if any) at the step training resumes from,
    and tell the user (rank 0)."""

    def changed(position: Position, old_size: int, new_size: int) -> None:
        if tracker is not None:
            tracker.log_membership(position.step, new_size)
        _announce(old_size, new_size, position.step)

    return changed


@main_process_only
def _announce(old_size: int, new_size: int, step: int) -> None:
    print(
        f"hvdtrain: workers changed {old_size} -> {new_size}; resuming from step {step}", flush=True
    )
