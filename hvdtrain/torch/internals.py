"""The private attributes of torch and Horovod that ``hvdtrain.torch`` relies on, in one place.

Public APIs do not offer these, and a framework release may move any of them without notice.
Every use goes through the functions below, and ``check`` (called by ``init``) finds each on a
throwaway object, so a release that moved one stops the job at start with one line naming it,
instead of failing mid-run or training wrongly. The tripwire (``torch.tripwire``) stays the
behavioural guard: it proves every update was data-parallel, whatever the names.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import horovod
import horovod.torch as hvd
import torch
from horovod.torch import mpi_ops

from ..core.guards import UserError

# Horovod's DistributedOptimizer: False inside ``skip_synchronize()``.
SHOULD_SYNCHRONIZE = "_should_synchronize"
# Horovod's DistributedOptimizer: parameter -> (allreduce handle, context) of the pending
# allreduces.
HANDLES = "_handles"
# torch's LRScheduler: what ``get_last_lr()`` returns, set after a rescale of the LR.
LAST_LR = "_last_lr"
# torch's GradScaler: per optimizer, ``unscale_``'s inf/NaN flags (FOUND_INF) that decide the step.
PER_OPTIMIZER_STATES = "_per_optimizer_states"
FOUND_INF = "found_inf_per_device"
# Horovod's all-to-all and all-gather into a given output tensor (the public ones allocate it):
# ZeRO receives into one reused buffer and gathers straight into its flat buffers.
ALLTOALL_INTO = "_alltoall_async"
ALLGATHER_INTO = "_allgather_async"


class InternalsError(UserError, RuntimeError):
    """A private attribute hvdtrain relies on is gone: the same on every rank of a host."""

    per_host = True


def check() -> None:
    """Find each private attribute on a throwaway object (after ``hvd.init``); ``InternalsError``
    naming the first one missing."""
    parameter = torch.zeros(1, requires_grad=True)
    optimizer = hvd.DistributedOptimizer(
        torch.optim.SGD([parameter], lr=0.1),
        named_parameters=[("hvdtrain.internals.probe", parameter)],
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu")
    found = {
        f"Horovod's DistributedOptimizer.{SHOULD_SYNCHRONIZE}": hasattr(
            optimizer, SHOULD_SYNCHRONIZE
        ),
        f"Horovod's DistributedOptimizer.{HANDLES}": hasattr(optimizer, HANDLES),
        f"torch's LRScheduler.{LAST_LR}": hasattr(scheduler, LAST_LR),
        f"torch's GradScaler.{PER_OPTIMIZER_STATES}['{FOUND_INF}']": _has_found_inf(
            scaler, optimizer
        ),
        f"Horovod's mpi_ops.{ALLTOALL_INTO}": hasattr(mpi_ops, ALLTOALL_INTO),
        f"Horovod's mpi_ops.{ALLGATHER_INTO}": hasattr(mpi_ops, ALLGATHER_INTO),
    }
    missing = [name for name, present in found.items() if not present]
    if missing:
        raise InternalsError(
            f"hvdtrain.torch relies on {missing[0]}, which torch {torch.__version__} / Horovod "
            f"{horovod.__version__} no longer has: install the tested versions (make install), or "
            f"update hvdtrain/torch/internals.py"
        )


def _has_found_inf(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer) -> bool:
    try:
        found_inf_flags(scaler, optimizer)
    except (AttributeError, KeyError, TypeError):
        return False
    return True


def should_synchronize(optimizer: torch.optim.Optimizer) -> bool:
    return getattr(optimizer, SHOULD_SYNCHRONIZE)


def set_should_synchronize(optimizer: torch.optim.Optimizer, value: bool) -> None:
    """For an optimizer that is not Horovod's but keeps its protocol (the sharded one): whether
    its next step synchronizes first (False inside its ``skip_synchronize()``)."""
    setattr(optimizer, SHOULD_SYNCHRONIZE, value)


def pending_handles(optimizer: torch.optim.Optimizer) -> list[Any]:
    """The handles of the allreduces Horovod started for this step
    (None or a callable: none yet)."""
    return [handle for handle, _ in list(getattr(optimizer, HANDLES).values())]


def set_last_lr(scheduler: Any, lrs: Iterable[float]) -> None:
    setattr(scheduler, LAST_LR, list(lrs))


def found_inf_flags(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer) -> dict:
    """device -> the flag ``scaler.unscale_(optimizer)`` set:
    1.0 if a gradient held an inf or NaN."""
    return getattr(scaler, PER_OPTIMIZER_STATES)[id(optimizer)][FOUND_INF]


def alltoall_into(tensor: torch.Tensor, output: torch.Tensor, name: str) -> int:
    """Start an all-to-all: rank r receives every rank's r-th equal slice of ``tensor``, in rank
    order, into ``output`` (as long as ``tensor``)."""
    received_splits = torch.empty(hvd.size(), dtype=torch.int32)
    return getattr(mpi_ops, ALLTOALL_INTO)(
        tensor, None, output, received_splits, name, hvd.global_process_set
    )


def allgather_into(tensor: torch.Tensor, output: torch.Tensor, name: str) -> int:
    """Start an all-gather of every rank's ``tensor`` into ``output`` (``size`` times its length;
    it may hold ``tensor`` at this rank's place already)."""
    return getattr(mpi_ops, ALLGATHER_INTO)(tensor, output, name, hvd.global_process_set)
