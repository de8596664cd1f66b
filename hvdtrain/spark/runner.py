"""``run``: Horovod's ``horovod.spark.run`` with what ``hvdtrain run`` adds to horovodrun.

What it adds: the ranks' output on the driver (Horovod leaves it in the executors' logs unless
asked), Gloo always (Horovod would pick MPI when built with it, and then needs mpirun on
every executor), MLflow prepared once on the driver and handed to every rank (one run per job,
like ``hvdtrain run``: ``MLFLOW_TRACKING_URI``, a run file through which the driver learns the
run), the hang bounds, and a failure as one line (``SparkJobError``) with the run marked FAILED,
instead of Horovod's and Spark's pages of tracebacks from two threads.

Only the variables hvdtrain sets travel to the workers (Horovod adds them to each executor's own
environment): the driver's PATH or PYTHONPATH must not replace an executor's.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..core import failures, tuning
from ..core.checkpoint import first_line
from ..core.guards import UserError
from ..launch.parsers import first_exit

# Horovod waits this long for all num_proc tasks to start (its own default: 600 s).
DEFAULT_START_TIMEOUT_S = 120


class SparkJobError(UserError, RuntimeError):
    """The Spark job failed (a rank exited non-zero, an executor was lost, tasks never started)."""


def run(
    train_fn: Callable,
    num_proc: int,
    *,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    start_timeout: int = DEFAULT_START_TIMEOUT_S,
    hang_timeout: int | None = None,
    nics: Sequence[str] | None = None,
    verbose: int = 0,
) -> list[Any]:
    """Run ``train_fn(*args, **kwargs)`` on ``num_proc`` Spark tasks as one Horovod job; returns
    each rank's return value, rank order. ``env``: extra variables for the workers.

    ``nics``: the network interfaces Gloo uses (``["eth0"]``); default ``lo`` in local mode, else
    Horovod's pick among the interfaces every task has, which is arbitrary when there are several
    (a docker or VPN bridge, say): name it on a real cluster.

    Needs an active SparkSession with at least ``num_proc`` task slots at once (Horovod's ranks
    all run together); ``train_fn`` and its arguments are pickled to the executors, and the
    driver script needs ``if __name__ == "__main__":`` (Horovod starts helper processes with
    ``spawn``, which re-imports it).
    """
    import horovod.spark
    from pyspark.errors import PySparkRuntimeError
    from pyspark.sql import SparkSession

    from ..launch import environment
    from ..tracking import legs

    failures.install()  # an uncaught SparkJobError prints as its one line
    try:
        context = SparkSession.active().sparkContext
    except PySparkRuntimeError:
        raise SparkJobError(
            "hvdtrain.spark.run needs an active SparkSession (SparkSession.builder...getOrCreate())"
        ) from None
    if num_proc < 1:
        raise SparkJobError(f"num_proc must be >= 1, got {num_proc}")
    timeout = tuning.hang_timeout() if hang_timeout is None else _checked_hang_timeout(hang_timeout)
    fd, run_file = tempfile.mkstemp(prefix="hvdtrain-spark-run-", suffix=".json")
    os.close(fd)
    try:
        workers = _worker_variables(
            environment.build(timeout, multi_host=not context.master.startswith("local")).variables
        )
        workers.update({legs.RUN_FILE_ENV: run_file, **(env or {})})
        if nics is None and context.master.startswith("local"):
            nics = ["lo"]
        with _quiet_spark_thread() as spark_errors:
            try:
                return horovod.spark.run(
                    train_fn,
                    args=tuple(args),
                    kwargs=dict(kwargs or {}),
                    num_proc=num_proc,
                    start_timeout=start_timeout,
                    use_gloo=True,
                    env=workers,
                    verbose=verbose,
                    nics=set(nics) if nics else None,
                    # else the ranks' output stays in the executors' logs
                    stdout=sys.stdout,
                    stderr=sys.stderr,
                )
            except Exception as err:
                reason = _reason(err, spark_errors)
        legs.mark_failed(Path(run_file), f"Spark job failed: {reason}")
        raise SparkJobError(f"Spark job failed: {reason}") from None
    finally:
        Path(run_file).unlink(missing_ok=True)


def _checked_hang_timeout(seconds: int) -> int:
    try:
        return tuning.check_hang_timeout(seconds)
    except ValueError as err:
        raise SparkJobError(f"hang_timeout: {err}") from None


def _worker_variables(full: Mapping[str, str]) -> dict[str, str]:
    """What hvdtrain adds or sets for the workers: the variables that differ from the driver's,
    and the driver's MLflow settings (experiment, credentials)."""
    return {k: v for k, v in full.items() if os.environ.get(k) != v or k.startswith("MLFLOW_")}


def _reason(err: Exception, spark_errors: list[BaseException]) -> str:
    """One line from Horovod's exception, or from the Spark job's (a task that failed before
    Horovod started)."""
    text = str(err)
    if exited := first_exit(text):
        return exited
    # the task that ran the rank is gone: nobody is left to report a status
    if lost := _LOST.search(text):
        return (
            f"worker {lost.group(1)} lost with its Spark executor (no exit status: the "
            "executor or its host died)"
        )
    if spark_errors:
        return _spark_reason(spark_errors[0])
    return f"{type(err).__name__}: {first_line(err)}"


_LOST = re.compile(r"Process name: (\S+)\s+Exit code: None")


def _spark_reason(err: BaseException) -> str:
    """The Java exception's message, which Py4J puts after its own first line."""
    lines = [line.strip(" :") for line in str(err).splitlines() if line.strip(" :")]
    cause = next(
        (line for line in lines if line.startswith("org.apache.spark.")), lines[0] if lines else ""
    )
    return cause.removeprefix("org.apache.spark.SparkException: ")


class _quiet_spark_thread:
    """Horovod runs the Spark job in a thread that re-raises its failure there: Python prints that
    thread's traceback (pages of Java stack). Collect it instead, for the one-line reason."""

    def __enter__(self) -> list[BaseException]:
        self.errors: list[BaseException] = []
        self.previous = threading.excepthook

        def hook(hook_args):
            if hook_args.exc_value is not None and isinstance(hook_args.exc_value, Exception):
                self.errors.append(hook_args.exc_value)
            else:
                self.previous(hook_args)

        threading.excepthook = hook
        return self.errors

    def __exit__(self, *exc) -> None:
        threading.excepthook = self.previous
