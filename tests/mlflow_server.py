"""A real ``mlflow server`` for tests: 127.0.0.1 (or another local address), a free port, sqlite
backend and artifact root in a temp dir. ``stop``/``start`` keep the port and the
store, so tests can stage an outage.

Use it by importing both fixtures into a test module:
``from tests.mlflow_server import mlflow_server, mlflow_server_session``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

# The server's GenAI job runners (seven huey processes) are not needed to track training.
QUIET_SERVER = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> None:
    """Until ``url/health`` answers 200; an error if ``proc`` exits or ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the MLflow server for {url} exited {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"the MLflow server for {url} was not healthy within {timeout} s")


class MlflowServer:
    """``host``: the address it listens on; test hosts reach the machine on their bridge's."""

    def __init__(self, root: Path, host: str = "127.0.0.1"):
        self.root = root
        self.host = host
        self.port = free_port(host)
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self) -> MlflowClient:
        return MlflowClient(self.uri)

    def start(self, timeout: float = 90) -> None:
        log = open(self.root / "server.log", "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--host",
                self.host,
                "--port",
                str(self.port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{self.root / 'mlflow.db'}",
                "--artifacts-destination",
                str(self.root / "artifacts"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own group: stop kills workers too
            env={**os.environ, **QUIET_SERVER},
        )
        try:
            wait_healthy(self.uri, self.proc, timeout)
        except RuntimeError as err:
            self.stop()
            raise RuntimeError(f"{err}; see {self.root / 'server.log'}") from None

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # an outage, not a shutdown
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.proc = None


@pytest.fixture(scope="session")
def mlflow_server_session(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mlflow_server(mlflow_server_session):
    """The session's server, running (restarted if a previous test left it stopped)."""
    if not mlflow_server_session.running:
        mlflow_server_session.start()
    return mlflow_server_session
