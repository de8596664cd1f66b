"""Slurm in a worker: a task of an ``srun`` step that no launcher started never joins a job.

``srun python train.py`` starts Gloo workers that each see a world of 1 and train alone as rank 0
while the allocation looks busy; ``check_direct_launch`` refuses them in each worker's ``init``.
The launcher's side of Slurm (allocations, ``srun hvdtrain run``) is ``hvdtrain.launch.slurm``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from .guards import UserError


class SlurmError(UserError, ValueError):
    """The allocation cannot be used as asked; the message is one line (in a worker too)."""


def check_direct_launch(env: Mapping[str, str] = os.environ) -> None:
    """In a worker, before Horovod's init: refuse tasks of an srun step that neither a Horovod
    launcher nor an MPI process manager (PMI/PMIx) started. Each would be a world of its own:
    training alone as rank 0 (Gloo), or aborting in MPI_Init (Open MPI without Slurm's PMI)."""
    tasks = int(env.get("SLURM_STEP_NUM_TASKS") or 1)
    if tasks > 1 and not any(name in env for name in _STARTED_BY_LAUNCHER):
        raise SlurmError(
            f"srun started {tasks} tasks (step {step_name(env)}) without a launcher: each would "
            "train alone as rank 0; launch with hvdtrain run, once, in the batch script or salloc "
            "shell (not under srun)"
        )


# Set in a worker by horovodrun (HOROVOD_RANK), mpirun, or srun's PMI/PMIx plugins.
_STARTED_BY_LAUNCHER = ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMI_FD", "PMIX_RANK")


def step_name(env: Mapping[str, str]) -> str:
    """``JOB.STEP`` of the srun step this process runs in, for messages."""
    return f"{env.get('SLURM_JOB_ID', '?')}.{env.get('SLURM_STEP_ID', '?')}"
