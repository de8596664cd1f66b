"""Stopping a job: its local workers by signal, its remote ones by closing their ssh sessions (their
``worker_guard`` stops them), then what horovodrun still runs; and the launcher's own SIGTERM
(a scheduler cancelling the job) or SIGINT (Ctrl-C), which ``JobMonitor`` turns into the same
stop.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time

GRACE_S = 3.0  # SIGTERM to SIGKILL: time to finish the MLflow run (horovodrun itself waits 5 s)
RANK_ENVS = ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK")  # a worker's rank, under Gloo / under MPI


def on_signal(signum: int, handler):
    """Install ``handler`` for ``signum`` (main thread only: elsewhere Python's default stays);
    returns the one it replaced."""
    try:
        return signal.signal(signum, handler)
    except ValueError:
        return signal.getsignal(signum)


def stop_job(proc: subprocess.Popen, frozen: dict[int, float]) -> None:
    """End a job after a worker failed: the local workers first (SIGTERM, so runs are finished as
    FAILED; SIGKILL after the grace period) and, by closing their ssh sessions, the remote ones
    (their guards do the same there); then whatever horovodrun still runs. A worker found frozen
    is added to ``frozen`` (rank -> since when)."""
    import psutil

    try:
        launcher = psutil.Process(proc.pid)
        tree = launcher.children(recursive=True)
    except psutil.NoSuchProcess:
        return
    workers = local_workers(proc, tree)
    for rank, p in workers:
        try:
            if p.status() == psutil.STATUS_STOPPED:
                frozen.setdefault(rank, time.monotonic())
                # a frozen worker cannot finish anything: SIGTERM would only wait out the grace
                p.kill()
            else:
                p.terminate()
        except psutil.NoSuchProcess:
            pass
    for p in tree:
        with contextlib.suppress(psutil.Error):
            if p.name() == "ssh":
                p.terminate()
    _, alive = psutil.wait_procs([p for _, p in workers], timeout=GRACE_S)
    for p in alive:
        p.kill()
    try:
        proc.wait(timeout=1)
    except subprocess.TimeoutExpired:
        for p in [*tree, launcher]:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass


def local_workers(proc: subprocess.Popen, tree: list | None = None) -> list[tuple[int, object]]:
    """(rank, psutil process) of the workers on this machine among ``proc``'s descendants."""
    import psutil

    if tree is None:
        try:
            tree = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
    return [(rank, p) for p in tree if (rank := _worker_rank(p)) is not None]


def _worker_rank(process) -> int | None:
    """A worker is the topmost process with its rank (Gloo's or MPI's) in its environment (not its
    children)."""
    import psutil

    def rank_of(p) -> str | None:
        environ = p.environ()
        return next((environ[name] for name in RANK_ENVS if name in environ), None)

    try:
        rank = rank_of(process)
        parent = process.parent()
        if rank is None or (parent is not None and rank_of(parent) is not None):
            return None
        return int(rank)
    except (psutil.Error, ValueError):
        return None
