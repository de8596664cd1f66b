"""System metrics (CPU, memory, disk, network, GPU) of every host of a job, in the job's one run.

MLflow's ``SystemMetricsMonitor`` samples the machine it runs on. Rank 0 alone would show one host
of a multi-host job, so there each host's local rank 0 runs a monitor under its own node id, its
hostname: the run holds ``system/<host>/cpu_utilization_percentage``, ... for every host, and the
dashboard shows them side by side. A job on one host keeps MLflow's plain ``system/...`` names.

The monitors on other hosts are the only MLflow traffic outside rank 0, and only from those
processes (they import MLflow; the other ranks never do). They log straight to rank 0's tracking
server, so a job whose store is a local file keeps rank 0's monitor only: another host would write
a store of its own. A monitor is a daemon thread: a server that dies makes it stop with one
warning, it never holds training, and stopping it waits at most ``STOP_TIMEOUT_S``.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Sequence
from typing import Any

from .legs import log

# MLflow's own switch (mlflow.enable_system_metrics_logging)
ENABLE_ENV = "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"
STOP_TIMEOUT_S = 10.0


def wanted(asked: bool | None) -> bool:
    """``asked``, or when the caller left it open,
    MLflow's ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING``."""
    return (
        asked
        if asked is not None
        else os.environ.get(ENABLE_ENV, "").strip().lower() in ("true", "1")
    )


def node_id(hostnames: Sequence[str]) -> str | None:
    """This host's name in the metric names, on a job that spans several hosts."""
    return socket.gethostname() if len(set(hostnames)) > 1 else None


def plan_for_hosts(uri: str, continued: bool, hostnames: Sequence[str]) -> dict[str, Any] | None:
    """Rank 0's word to the other hosts' local rank 0: where to log (``None``: they start none)."""
    from .store import is_local

    return (
        None
        if node_id(hostnames) is None or is_local(uri)
        else {"uri": uri, "continued": continued}
    )


def start_on_this_host(
    local_rank: int, hostnames: Sequence[str], run_id: str | None, plan: dict[str, Any] | None
) -> Any:
    """Not rank 0: this host's monitor when this process is its local rank 0
    (none on rank 0's host)."""
    if plan is None or run_id is None or local_rank != 0 or socket.gethostname() == hostnames[0]:
        return None
    return start(run_id, plan["uri"], socket.gethostname(), plan["continued"])


def start(run_id: str, uri: str, node: str | None, continued: bool) -> Any:
    """MLflow's sampler of this host, logging to the run every
    ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` s (default 10); ``None``, with one
    warning, when it cannot start."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        from .store import bound_http_calls

        # a dead server's retries end within seconds (rank 0's process has them already)
        bound_http_calls()
        monitor = SystemMetricsMonitor(
            run_id, resume_logging=continued, node_id=node, tracking_uri=uri
        )
        monitor.start()
        return monitor
    except Exception as err:  # system metrics must never stop training
        log.warning(
            "hvdtrain: no system metrics from host %s: %s: %s",
            socket.gethostname(),
            type(err).__name__,
            err,
        )
        return None


def stop(monitor: Any, timeout: float = STOP_TIMEOUT_S) -> None:
    """Stop sampling and send the last samples, waiting at most ``timeout`` s
    (a dead server's retries)."""
    closing = threading.Thread(
        target=monitor.finish, name="hvdtrain-system-metrics-stop", daemon=True
    )
    closing.start()
    closing.join(timeout)
