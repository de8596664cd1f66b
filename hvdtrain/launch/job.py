"""A job's run: the horovodrun command for a checked ``Job``, on the network the pre-flight checks
chose, watched by ``JobMonitor`` until it ends, then the summary block.

What it adds to plain horovodrun: user errors caught before any worker starts (``request``), on
several hosts the pre-flight checks of ``preflight`` and the network settings they choose, MLflow
prepared once and passed to every worker (``environment``), Gloo by default, bounds on hung jobs,
and one line that explains a failed job instead of horovodrun's traceback, with the MLflow run
marked FAILED.
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..core import secrets
from ..tracking import login
from . import (
    environment,
    horovodrun,
    hostkeys,
    preflight,
    secret_files,
    summary,
    worker_guard,
)
from .request import Job, Request, check


def run(request: Request) -> int:
    """Check ``request``, run the job, and return its exit status (``UsageError`` before any worker
    starts when the request cannot work)."""
    started = time.monotonic()
    job = check(request)
    if not request.host_key_check:  # the probes, horovodrun's ssh and mpirun's read it
        os.environ[hostkeys.NO_CHECK_ENV] = "1"
    plan = _preflight(job)
    command = build_command(job, plan)
    from ..core.args import RESULTS_ENV  # the job's dependencies: not for a refused request
    from ..tracking import legs
    from .hosts import rank_hosts
    from .monitor import JobMonitor

    with tempfile.TemporaryDirectory(prefix="hvdtrain-run-") as tmp:
        run_file, results_file = Path(tmp, "run.json"), Path(tmp, "results.json")
        run_file.touch()
        tracked = "--no-tracking" not in request.args
        env = environment.build(
            job.hang_timeout, multi_host=plan is not None, mpi=request.mpi, tracked=tracked
        )
        if tracked:
            login.check(env.variables)
        variables = {
            **env.variables,
            legs.RUN_FILE_ENV: str(run_file),
            RESULTS_ENV: str(results_file),
        }
        if request.secret_env:
            variables[secrets.SECRET_ENV] = ",".join(request.secret_env)
        monitor = JobMonitor(
            rank_hosts=rank_hosts(job.hosts, job.np) if not request.elastic else {},
            elastic=request.elastic,
            checkpoint_dir=_option(request.args, "--checkpoint-dir"),
            run_file=run_file,
            hang_timeout=env.hang_timeout,
            mpi=request.mpi,
            remote_hosts=[h for h, _ in job.hosts if not preflight.is_local(h)],
            ssh_port=request.ssh_port,
            all_ranks=request.all_ranks,
            quiet_startup="TF_CPP_MIN_LOG_LEVEL" not in os.environ,
        )
        # Under Gloo, remote workers read the secrets from a file; MPI sends them itself (-x NAME).
        remote = [h for h, _ in job.hosts if preflight.started_over_ssh(h)]
        values = {} if request.mpi else secrets.secret_env(variables)
        with secret_files.sent(remote, request.ssh_port, values) as secret_file:
            if secret_file:
                variables[worker_guard.SECRETS_FILE_ENV] = secret_file
            threading.Thread(
                target=_import_mlflow_once_tracking, args=(run_file,), daemon=True
            ).start()
            returncode = monitor.run(command, variables)
        if returncode == 0:
            lines = summary.block(
                workers=job.np,
                hosts=[h for h, _ in job.hosts],
                wall_s=time.monotonic() - started,
                results=summary.read(results_file),
                run=summary.read(run_file),
            )
            print("\n".join(lines), flush=True)
    return returncode


def _import_mlflow_once_tracking(run_file: Path) -> None:
    """Once rank 0 has opened an MLflow run, import MLflow here in the background, so that marking
    the run FAILED after a worker failure (``legs.mark_failed``) does not first pay its import."""
    while True:
        try:
            if run_file.stat().st_size > 0:
                break
        except OSError:
            return  # the job ended (its temporary directory is gone)
        time.sleep(0.5)
    import mlflow.tracking  # noqa: F401


def build_command(job: Job, plan: preflight.Plan | None = None) -> list[str]:
    """The horovodrun command line for ``job``, on the network ``plan`` chose (None: one host)."""
    request = job.request
    if request.elastic:
        placement = [
            "--min-np",
            str(job.min_np),
            "--host-discovery-script",
            shlex.quote(str(Path(request.host_discovery_script).absolute())),
        ]
        placement += ["--max-np", str(request.max_np)] if request.max_np else []
        if request.blacklist_cooldown_range:
            placement += ["--blacklist-cooldown-range", *map(str, request.blacklist_cooldown_range)]
        if plan is None:
            # Elastic Gloo otherwise waits for a second host to agree on a network interface.
            placement += ["--network-interface", "lo"]
    else:
        placement = ["-H", ",".join(f"{h}:{s}" for h, s in job.hosts)]
    worker = [sys.executable]
    if plan is not None:
        # horovodrun serves the rendezvous on its --network-interfaces' address and tells workers
        # to bind that same name: given the launcher's interface, the workers' is set here.
        placement += [
            "--network-interfaces",
            plan.interface if request.mpi else plan.launcher_interface,
        ]
        settings = (
            []
            if request.mpi
            else [
                f"HOROVOD_GLOO_RENDEZVOUS_ADDR={plan.rendezvous_address}",
                f"HOROVOD_GLOO_IFACE={plan.interface}",
                f"NCCL_SOCKET_IFNAME={plan.interface}",
            ]
        )
        worker = [
            *(["env", *settings] if settings else []),
            sys.executable,
            "-m",
            worker_guard.__name__,
            sys.executable,
        ]
    # Under MPI the default port is left to environment's ssh keepalives (horovodrun would override
    # its ssh options).
    port = [] if request.mpi and request.ssh_port == 22 else ["-p", str(request.ssh_port)]
    return [
        *horovodrun.COMMAND,
        "-np",
        str(job.np),
        *placement,
        "--mpi" if request.mpi else "--gloo",
        *port,
        *worker,
        str(request.script),
        *request.args,
    ]


def _preflight(job: Job) -> preflight.Plan | None:
    """The pre-flight checks of a job on several hosts
    (``UsageError``), and the network they chose."""
    request = job.request
    return preflight.check(
        preflight.Request(
            hosts=[h for h, _ in job.hosts],
            ssh_port=request.ssh_port,
            python=sys.executable,
            cwd=os.getcwd(),
            script=str(Path(request.script).absolute()),
            interface=request.network_interface,
            mpi=request.mpi,
        )
    )


def _option(argv: tuple[str, ...], flag: str) -> str | None:
    """The value of ``flag`` in the script's arguments (``--flag V`` or ``--flag=V``), if given."""
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None
