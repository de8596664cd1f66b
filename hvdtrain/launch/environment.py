"""The environment every worker of a job starts with, built once by the launcher.

This environment plus what the workers must share: the MLflow store (a local one prepared here
when ``MLFLOW_TRACKING_URI`` is unset, so every rank writes to the same place), quiet framework
start-up, the hang bound and Horovod's settings that enforce it (``core.tuning``; applied here
too, so scripts that call ``hvd.init()`` themselves get them), the launcher's host name for the
``worker_guard`` of remote workers and, under MPI across hosts, ssh keepalives and the host key
rule (``hostkeys``).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass

from ..core import tuning
from ..core.errors import UsageError
from . import hostkeys, worker_guard


@dataclass(frozen=True)
class WorkerEnvironment:
    variables: dict[str, str]
    hang_timeout: int  # seconds, as written into the variables (``HVDTRAIN_HANG_TIMEOUT``)


def build(
    hang_timeout: int, multi_host: bool, mpi: bool = False, tracked: bool = True
) -> WorkerEnvironment:
    """The workers' environment for a job bounded by ``hang_timeout`` seconds (already checked);
    ``tracked=False`` (the script was given ``--no-tracking``): no local store is prepared, nor
    an ``mlflow.db`` left in the working directory."""
    env = dict(os.environ)
    _check_tracking_uri(env.get("MLFLOW_TRACKING_URI", ""))
    if tracked and not env.get("MLFLOW_TRACKING_URI"):
        if multi_host:
            print(
                "hvdtrain: warning: MLFLOW_TRACKING_URI is not set; on several hosts rank 0's "
                "local store is used; set it to a shared tracking server",
                file=sys.stderr,
            )
        prepared = _prepared_local_store()
        if prepared:
            env["MLFLOW_TRACKING_URI"] = prepared
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # the summary names the run, once
    env.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    env[tuning.HANG_TIMEOUT_ENV] = str(hang_timeout)
    if multi_host:
        env[worker_guard.LAUNCHER_HOST_ENV] = socket.gethostname()
        if mpi:
            _bound_mpi_links(env, hang_timeout)
    tuning.apply_horovod_defaults(env, hang_timeout_s=hang_timeout)
    return WorkerEnvironment(env, hang_timeout)


# A scheme missing its colon or a slash: MLflow would take the URI for a local directory, make it,
# and fail there with advice about file stores.
_MISTYPED_SCHEME = re.compile(
    r"^(https?|sqlite|postgresql|mysql|mssql|file|databricks)(//|:/?)(?!/)"
)


def _check_tracking_uri(uri: str) -> None:
    """``UsageError`` for an ``MLFLOW_TRACKING_URI`` whose scheme is mistyped (``http//host``,
    ``http:/host``); a path, ``file:/path`` and ``databricks`` itself are left to MLflow."""
    mistyped = _MISTYPED_SCHEME.match(uri)
    if mistyped and not (uri.startswith(("file:/", "databricks")) and "//" not in uri[:12]):
        scheme = mistyped.group(1)
        rest = re.sub(r"^[^/@]*@", "***@", uri[mistyped.end() :])  # no password in the line
        raise UsageError(
            f"MLFLOW_TRACKING_URI={uri[: mistyped.end()]}{rest} is not a URI MLflow can reach: "
            f"did you mean {scheme}://{'/' if scheme == 'sqlite' else ''}{rest}?"
        )


def _prepared_local_store() -> str:
    """``tracking.prepare_local_store`` in a child process: the launcher itself never imports
    MLflow, whose import and interpreter shutdown cost it seconds of CPU on a busy host, and
    would delay the launcher's exit after a failed job by as much.

    "" when the local store cannot be written here (a read-only working directory): the job
    still runs, a script without tracking (``--no-tracking``) as it should, and a tracked one's
    rank 0 says in one line that tracking is off and why (``tracking.start``)."""
    code = (
        "from hvdtrain.tracking.store import StoreNotWritable, prepare_local_store\n"
        "try:\n    print(prepare_local_store())\n"
        "except StoreNotWritable:\n    print()"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        last = [line for line in done.stderr.splitlines() if line.strip()]
        raise UsageError(
            "cannot prepare the local MLflow store: "
            f"{last[-1] if last else f'exit {done.returncode}'}"
        )
    lines = done.stdout.splitlines()
    return lines[-1].strip() if lines else ""


def _bound_mpi_links(env: dict[str, str], hang_timeout: int) -> None:
    """MPI has no timeout: a host whose link dies leaves every rank waiting for ever. mpirun's ssh
    sessions to the hosts' daemons then check the link (ssh keepalives) and give up within about
    the hang timeout; mpirun ends the job and the launcher names the host."""
    interval = max(1, hang_timeout // 3)
    env.setdefault(
        "OMPI_MCA_plm_rsh_args",
        " ".join(
            ["-o", f"ServerAliveInterval={interval}", "-o", "ServerAliveCountMax=3"]
            + hostkeys.ssh_options(env)
        ),
    )
