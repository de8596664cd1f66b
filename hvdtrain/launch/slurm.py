"""What a Slurm allocation says about the job: hosts, slots, and launches that cannot work.

Inside ``sbatch`` or ``salloc`` Slurm names the job's nodes in its compressed hostlist syntax
(``SLURM_JOB_NODELIST=gpu[01-04],big7``) and the tasks each runs (``SLURM_TASKS_PER_NODE=4(x3),2``).
``hvdtrain run`` starts one worker per task, so it needs no ``-H`` there.

``srun hvdtrain run`` starts workers that never form one job (every task launches its own copy
of the job, each training alone as rank 0 while the allocation looks busy): ``check_launcher``
refuses it; ``core.slurm`` refuses the other such launch, ``srun python train.py``, in the workers.

Framework-free and without Slurm's own tools (``scontrol`` is often missing in containers);
the expansion is checked against ``scontrol show hostnames`` in ``tests/test_slurm.py``.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..core.slurm import SlurmError, step_name


@dataclass(frozen=True)
class Allocation:
    job_id: str
    nodelist: str  # as Slurm wrote it, for messages
    hosts: list[tuple[str, int]]  # (host, tasks) in Slurm's node order: rank 0 on the first

    @property
    def tasks(self) -> int:
        return sum(tasks for _, tasks in self.hosts)

    def describe(self) -> str:
        return f"Slurm job {self.job_id} has {self.tasks} tasks on {self.nodelist}"


def allocation(env: Mapping[str, str] = os.environ) -> Allocation | None:
    """The job's allocation when this process runs inside one (batch script, salloc shell), else
    None. A malformed one is a ``SlurmError``; so is an srun step, where the variables describe
    the step, not the job (see ``check_launcher``)."""
    job_id, nodelist = env.get("SLURM_JOB_ID"), env.get("SLURM_JOB_NODELIST")
    if not job_id or not nodelist:
        return None
    if env.get("SLURM_STEP_ID") is not None:
        raise SlurmError(
            f"inside srun step {job_id}.{env['SLURM_STEP_ID']} the job's hosts are not visible: "
            f"run hvdtrain run in the batch script or salloc shell, not under srun (or pass -H)"
        )
    hosts = expand_hostlist(nodelist)
    per_node = env.get("SLURM_TASKS_PER_NODE")
    if not per_node:
        raise SlurmError(
            f"Slurm job {job_id}: SLURM_TASKS_PER_NODE is not set (allocate tasks, e.g. "
            f"--ntasks-per-node=1, or pass -H)"
        )
    counts = expand_counts(per_node)
    if len(counts) != len(hosts):
        raise SlurmError(
            f"Slurm job {job_id}: SLURM_TASKS_PER_NODE={per_node} gives {len(counts)} counts for "
            f"{len(hosts)} nodes in SLURM_JOB_NODELIST={nodelist}"
        )
    return Allocation(job_id, nodelist, list(zip(hosts, counts)))


def check_launcher(env: Mapping[str, str] = os.environ) -> None:
    """Refuse a launcher started by srun once per task: each would launch the whole job."""
    tasks = int(env.get("SLURM_STEP_NUM_TASKS") or 1)
    if tasks > 1:
        raise SlurmError(
            f"started by srun as task {env.get('SLURM_PROCID', '?')} of {tasks} (step "
            f"{step_name(env)}): each task would launch its own job; run hvdtrain run once, in the "
            "batch script or salloc shell, without srun"
        )


def check_world_size(alloc: Allocation, np: int | None) -> int:
    """The number of workers for a job in ``alloc``: one per task; ``-np`` must agree."""
    if np is not None and np != alloc.tasks:
        raise SlurmError(
            f"-np {np} differs from the allocation: {alloc.describe()}; hvdtrain run starts one "
            f"worker per task (leave out -np, or change --ntasks/--ntasks-per-node)"
        )
    return alloc.tasks


# --- Slurm's compressed lists ---------------------------------------------------------------------


def expand_hostlist(text: str) -> list[str]:
    """``t0h[2-3],gpu[01,07-08],login`` -> every name, in order; zero padding kept; several
    bracket groups in one name expand as their product (``r[1-2]n[1-2]``), as Slurm does."""
    names: list[str] = []
    for item in _split_top_level(text.strip()):
        parts = re.split(r"\[([^\]]*)\]", item)  # literal, ranges, literal, ranges, ..., literal
        if any(c in part for part in parts[::2] for c in "[]") or not item:
            raise SlurmError(f"bad Slurm hostlist {text!r}")
        choices = [
            [part] if i % 2 == 0 else _expand_ranges(part, text) for i, part in enumerate(parts)
        ]
        names += ["".join(combo) for combo in itertools.product(*choices)]
    return names


def expand_counts(text: str) -> list[int]:
    """``2(x3),1`` -> ``[2, 2, 2, 1]`` (SLURM_TASKS_PER_NODE, SLURM_JOB_CPUS_PER_NODE)."""
    counts: list[int] = []
    for item in text.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", item)
        if not match:
            raise SlurmError(f"bad Slurm task count list {text!r} (expected e.g. 2(x3),1)")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def _split_top_level(text: str) -> list[str]:
    """Split at the commas outside brackets."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth not in (0, 1):
            raise SlurmError(f"bad Slurm hostlist {text!r}")
        if char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if depth:
        raise SlurmError(f"bad Slurm hostlist {text!r}")
    return items + [text[start:]]


def _expand_ranges(ranges: str, text: str) -> list[str]:
    values = []
    for part in ranges.split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part.strip())
        if not match or (match.group(2) is not None and int(match.group(2)) < int(match.group(1))):
            raise SlurmError(f"bad range {part!r} in Slurm hostlist {text!r}")
        low, high = match.group(1), match.group(2) or match.group(1)
        values += [str(n).zfill(len(low)) for n in range(int(low), int(high) + 1)]
    return values
