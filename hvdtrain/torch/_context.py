"""``init``: start Horovod for torch and describe the job in a core ``Context``."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from ..core import context as core_context
from ..core import failures, slurm, versions

# before Horovod's extension loads: a mismatched build fails inside its import
versions.check("torch")

import horovod.torch as hvd  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..core.tuning import apply_horovod_defaults  # noqa: E402
from . import internals  # noqa: E402


def _average(values: Mapping[str, float]) -> dict[str, float]:
    keys = sorted(values)
    if not keys:
        return {}
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    averaged = hvd.allreduce(tensor, op=hvd.Average, name="hvdtrain.average." + ",".join(keys))
    return dict(zip(keys, averaged.tolist()))


def _gather(values: Sequence[float]) -> list[list[float]]:
    row = torch.tensor([list(values)], dtype=torch.float64)
    return hvd.allgather(row, name=f"hvdtrain.gather.{len(row[0])}").tolist()


def _broadcast_object(obj: Any, root_rank: int = 0) -> Any:
    # A fixed name: Horovod's default is the object's type name, which differs between the root
    # (sending a dict) and the others (sending None), and mismatched names wait forever.
    return hvd.broadcast_object(obj, root_rank=root_rank, name="hvdtrain.broadcast_object")


def _membership() -> tuple[int, int, int, int]:
    return hvd.rank(), hvd.size(), hvd.local_rank(), hvd.local_size()


def init(seed: int | None = 0, threads: int | None = None) -> core_context.Context:
    """Initialise Horovod and this worker: one GPU per local rank, CPU threads, seeds.

    Each rank is seeded with ``seed + rank`` so dropout and augmentation differ between ranks;
    ``wrap_optimizer`` broadcasts rank 0's weights, so initial weights still agree.
    """
    failures.install()  # one line per rank, not pages of tracebacks, when a peer fails
    apply_horovod_defaults()
    slurm.check_direct_launch()  # srun without a launcher: N lone rank-0 workers
    hvd.init()
    # a torch or Horovod release that moved what hvdtrain.torch relies on: one line
    internals.check()
    if torch.cuda.is_available():
        torch.cuda.set_device(hvd.local_rank())
        device = f"cuda:{hvd.local_rank()}"
    else:
        device = "cpu"
        torch.set_num_threads(core_context.threads_per_rank(hvd.local_size(), threads))
    if seed is not None:
        rank_seed = seed + hvd.rank()
        random.seed(rank_seed)
        np.random.seed(rank_seed)
        torch.manual_seed(rank_seed)
    return core_context.set_current(
        core_context.Context(
            "torch",
            *_membership(),
            device=device,
            broadcast_object=_broadcast_object,
            average=_average,
            gather=_gather,
            membership=_membership,
        )
    )


def current() -> core_context.Context:
    """The job as this worker sees it (rank, size, device...), made by ``init``; a clear error
    when ``init`` was not called."""
    return core_context.current("torch")


def average_metrics(values: Mapping[str, float]) -> dict[str, float]:
    """Mean of each metric over all ranks (every rank must call it with the same keys)."""
    return current().average(values)
