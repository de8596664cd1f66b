"""Elastic training for torch:
the model/optimizer ``Snapshot`` and the restart loop (policy: core.elastic)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, TypeVar

import horovod.torch.elastic as hvd_elastic
import torch

from ..core.elastic import Position
from ..elastic import TrainingState
from ._context import current
from .optimizer import broadcast_scheduler, broadcast_state, rescale_lr

T = TypeVar("T")


class TorchSnapshot:
    """Model, optimizer and scheduler state, copied to host memory at each commit."""

    def __init__(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any = None
    ):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler

    def capture(self) -> dict:
        parts = {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler}
        return {
            name: _to_cpu(part.state_dict()) for name, part in parts.items() if part is not None
        }

    def apply(self, saved: dict) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(saved["scheduler"])
        # after load_state_dict: the interrupted step's gradients must not carry over
        self.optimizer.zero_grad()

    def broadcast(self) -> None:
        broadcast_state(self.model, self.optimizer)
        if self.scheduler is not None:
            broadcast_scheduler(self.scheduler)

    def rescale(self) -> None:
        rescale_lr(self.optimizer, self.scheduler)


def run(
    train: Callable[[TrainingState], T],
    snapshot: TorchSnapshot,
    position: Position,
    on_membership: Callable[[Position, int, int], None] | None = None,
) -> T:
    """Call ``train(state)`` until it returns, restarting it from the last commit after each
    membership change (Horovod's ``horovod.torch.elastic.run``)."""
    state = TrainingState(current(), snapshot, position, on_membership)
    return hvd_elastic.run(train)(state)


def _to_cpu(value: Any) -> Any:
    """A deep copy with tensors on the CPU: a commit must survive the device's failure."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return copy.deepcopy(value)
