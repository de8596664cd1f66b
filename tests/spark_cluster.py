"""A real Spark standalone cluster on loopback: a master and workers started from PySpark's own
jars (``spark-class``), each worker with its own cores, memory and work directory, all in one
temporary directory removed afterwards with every process, whatever happened in the test.

Use: ``from tests.spark_cluster import spark_standalone`` in a test module; ``spark_standalone.url``
is the master to submit to.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import require
from tests.mlflow_server import free_port

START_TIMEOUT_S = 120


def unavailable_reason() -> str | None:
    if shutil.which("java") is None:
        return "Spark tests need Java 17 or 21 (apt-get install openjdk-17-jre-headless)"
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return "Spark tests need pyspark (make install)"
    return None


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


def spark_env(**extra: str) -> dict[str, str]:
    """Loopback only, and executors run this Python (the virtualenv with hvdtrain)."""
    return {
        **os.environ,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_HOME": str(spark_home()),
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        **extra,
    }


class SparkStandalone:
    def __init__(self, root: Path, workers: int, cores: int, memory: str):
        self.root = root
        self.port, self.ui_port = free_port(), free_port()
        self.workers = workers
        self.cores, self.memory = cores, memory
        self.procs: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    def up(self) -> SparkStandalone:
        self._start(
            "master",
            "org.apache.spark.deploy.master.Master",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--webui-port",
            str(self.ui_port),
        )
        for i in range(1, self.workers + 1):
            work = self.root / f"worker{i}"
            work.mkdir()
            self._start(
                f"worker{i}",
                "org.apache.spark.deploy.worker.Worker",
                self.url,
                "--host",
                "127.0.0.1",
                "--cores",
                str(self.cores),
                "--memory",
                self.memory,
                "--work-dir",
                str(work),
                "--webui-port",
                str(free_port()),
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(self.alive_workers()) < self.workers:
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                raise RuntimeError(
                    f"Spark standalone cluster not up within {START_TIMEOUT_S} s:\n"
                    f"{self.log_tails()}"
                )
            time.sleep(0.5)
        return self

    def alive_workers(self) -> list[dict]:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.ui_port}/json/", timeout=2
            ) as response:
                state = json.load(response)
        except OSError:
            return []
        return [w for w in state.get("workers", []) if w.get("state") == "ALIVE"]

    def executors(self) -> dict[str, int]:
        """worker name -> pid of the executor JVM it runs for the application, if any."""
        import psutil

        found = {}
        for i, proc in enumerate(self.procs[1:], start=1):
            for child in psutil.Process(proc.pid).children(recursive=True):
                try:
                    if "CoarseGrainedExecutorBackend" in " ".join(child.cmdline()):
                        found[f"worker{i}"] = child.pid
                except psutil.Error:
                    pass
        return found

    def log_tails(self) -> str:
        return "\n".join(
            f"--- {log.name} ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            for log in sorted(self.root.glob("*.log"))
        )

    def down(self) -> None:
        for proc in self.procs:
            try:
                # the JVM and the executors and Python workers it started
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def _start(self, name: str, cls: str, *argv: str) -> None:
        with open(self.root / f"{name}.log", "ab") as log:
            self.procs.append(
                subprocess.Popen(
                    [str(spark_home() / "bin" / "spark-class"), cls, *argv],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env=spark_env(SPARK_WORKER_DIR=str(self.root), SPARK_LOG_DIR=str(self.root)),
                )
            )


@pytest.fixture(scope="module")
def spark_standalone():
    """A master and 2 workers (1 core, 2 GB each) on 127.0.0.1, shared by a module's tests (a
    JVM each: tens of seconds to start); all removed after them."""
    require(unavailable_reason())
    cluster = SparkStandalone(
        Path(tempfile.mkdtemp(prefix="hvdtrain-spark-")), workers=2, cores=1, memory="2g"
    )
    try:
        yield cluster.up()
    finally:
        cluster.down()
