"""Jobs on test hosts (``hvdtrain.launch.testhosts``) for the multi-host tests: ``hvdtrain run``
started on a host as a user would there, the worker processes of a rank on a host, a host left
clean, and an MLflow server on a host of its own."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from hvdtrain.launch.testhosts import TestHosts
from tests.launch import REPO
from tests.mlflow_server import QUIET_SERVER, free_port, wait_healthy

HVDTRAIN = str(Path(sys.executable).parent / "hvdtrain")


def job_env(**extra: str) -> dict[str, str]:
    """This environment without hvdtrain's, Horovod's and MLflow's settings, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_", "HVDTRAIN_", "HOROVOD_"))
    }
    env.update(
        {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3", **extra}
    )
    return env


def one_worker_per_host(hosts: TestHosts) -> list[str]:
    """``hvdtrain run`` flags for a job of one worker on each of ``hosts``."""
    return ["-np", str(len(hosts.names)), "-H", ",".join(f"{h}:1" for h in hosts.names)]


def launch(
    hosts: TestHosts, on: str, *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """``hvdtrain run ARGS`` started on host ``on`` in ``cwd`` (output captured)."""
    return hosts.spawn(
        on,
        [HVDTRAIN, "run", *args],
        cwd=cwd,
        env=env or job_env(),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def run(
    hosts: TestHosts,
    on: str,
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    proc = launch(hosts, on, *args, cwd=cwd, env=env)
    out, err, _ = finish(proc, time.monotonic(), timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def finish(proc: subprocess.Popen, since: float, timeout: float) -> tuple[str, str, float]:
    """The job's output and its time since ``since``; a job still running after ``timeout`` is a
    failure (and is killed)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for p in [*psutil.Process(proc.pid).children(recursive=True), proc]:
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                p.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the job still ran {timeout} s later:\n{err[-3000:]}") from None
    return out, err, time.monotonic() - since


def worker(
    hosts: TestHosts, host: str, rank: int, proc: subprocess.Popen, timeout: float = 180
) -> int:
    """The pid of the training process of ``rank`` on ``host``
    (the worker itself, not its guard)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in hosts.processes(host):
            with contextlib.suppress(OSError):
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                command = Path(f"/proc/{pid}/cmdline").read_bytes()
                if (
                    any(
                        v in environ
                        for v in (
                            f"HOROVOD_RANK={rank}".encode(),
                            f"OMPI_COMM_WORLD_RANK={rank}".encode(),
                        )
                    )
                    and b"worker_guard" not in command
                    and b"python" in command
                ):
                    return pid
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise AssertionError(f"no worker of rank {rank} on {host} within {timeout} s")


def wait_clean(hosts: TestHosts, names: list[str], timeout: float) -> float:
    """Seconds until no process of a job is left on any of ``names`` (only their sshd); an
    assertion listing what is left after ``timeout``."""
    started = time.monotonic()
    while True:
        left = {name: hosts.job_processes(name) for name in names}
        if not any(left.values()):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"processes left {timeout} s after the job ended: {left}")
        time.sleep(0.2)


class HostMlflowServer:
    """``mlflow server`` on a test host of its own,
    reached by every host as ``http://HOST:PORT``."""

    def __init__(
        self,
        hosts: TestHosts,
        host: str,
        root: Path,
        admin_password: str | None = None,
        admin_token: str | None = None,
    ):
        """``admin_password``: the server requires a login (MLflow's basic-auth app, as a shared
        server should; its admin is ``admin``), or with ``admin_token`` too, the admin's bearer
        token (``tests/mlflow_token_auth.py``)."""
        self.hosts, self.host, self.root, self.port = hosts, host, root, free_port()
        env, auth = {**os.environ, **QUIET_SERVER}, []
        if admin_password:
            (root / "auth.ini").write_text(
                f"[mlflow]\ndefault_permission = READ\n"
                f"database_uri = sqlite:///{root / 'basic_auth.db'}\nadmin_username = admin\n"
                "authorization_function = "
                + (
                    "tests.mlflow_token_auth:authenticate\n"
                    if admin_token
                    else "mlflow.server.auth:authenticate_request_basic_auth\n"
                )
            )
            if admin_token:
                from tests.mlflow_token_auth import TOKEN_ENV

                env.update({TOKEN_ENV: admin_token, "PYTHONPATH": str(REPO)})
            env["MLFLOW_AUTH_CONFIG_PATH"] = str(root / "auth.ini")
            env["MLFLOW_AUTH_ADMIN_PASSWORD"] = admin_password
            env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = os.urandom(16).hex()  # its CSRF protection
            auth = ["--app-name", "basic-auth"]
        log = open(root / "server.log", "ab")
        self.proc = hosts.spawn(
            host,
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                *auth,
                "--host",
                "0.0.0.0",
                "--port",
                str(self.port),
                "--allowed-hosts",
                f"{host}:{self.port}",
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{root / 'mlflow.db'}",
                "--artifacts-destination",
                str(root / "artifacts"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
        log.close()
        wait_healthy(self.uri, self.proc, timeout=120)

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


class CommandLineWatch:
    """``with CommandLineWatch(values) as watch:`` reads every process's command line on this
    machine (all test hosts share its process list, as ``ps`` on each shows it) every 0.1 s for
    the block; ``watch.found``: the command lines that held one of ``values``."""

    def __init__(self, values: list[str]):
        self.values, self.found = [v.encode() for v in values], []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> CommandLineWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._done.wait(0.1):
            for path in Path("/proc").glob("[0-9]*/cmdline"):
                with contextlib.suppress(OSError):
                    command = path.read_bytes()
                    if any(v in command for v in self.values):
                        self.found.append(command.replace(b"\0", b" ").decode(errors="replace"))
