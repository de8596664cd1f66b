"""Run scripts under ``horovodrun -np N --gloo`` on localhost, as the tests' multi-process jobs.

Worker scripts in ``tests/workers`` write ``<out>/rank<R>.json`` with
``tests.workers.common.report``; the test asserts on those values, not only on the exit code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from hvdtrain.launch import horovodrun as horovodrun_launcher
from hvdtrain.launch.console import is_tensorflow_startup_noise

WORKERS = Path(__file__).parent / "workers"
REPO = Path(__file__).parent.parent


def own_lines(stderr: str) -> list[str]:
    """A process's stderr lines without TensorFlow's start-up lines, which ``TF_CPP_MIN_LOG_LEVEL``
    cannot silence on some CPUs: what the tests compare exactly is the rest."""
    return [line for line in stderr.strip().splitlines() if not is_tensorflow_startup_noise(line)]


def run_script(
    script: str | Path,
    *args: str,
    np: int = 2,
    timeout: float = 300,
    env: dict[str, str] | None = None,
    check: bool = True,
    cwd: Path = REPO,
    plain_horovodrun: bool = False,
) -> subprocess.CompletedProcess:
    """Run any python ``script`` on ``np`` local ranks;
    raise with the workers' errors if it fails.

    horovodrun is started as ``hvdtrain run`` starts it (``hvdtrain.launch.horovodrun``: Horovod's
    own launcher, its build probe answered from the install, ~6 s of CPU less per launch);
    ``plain_horovodrun`` starts the ``horovodrun`` script users type, for the tests that show
    Horovod scripts run under it unchanged."""
    launcher = (
        [str(Path(sys.executable).parent / "horovodrun")]
        if plain_horovodrun
        else list(horovodrun_launcher.COMMAND)
    )
    cmd = [
        *launcher,
        "-np",
        str(np),
        "-H",
        f"localhost:{np}",
        "--gloo",
        sys.executable,
        str(script),
        *args,
    ]
    full_env = {
        **os.environ,
        "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "OMP_NUM_THREADS": "1",
        **(env or {}),
    }
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=cwd
    )
    if check and proc.returncode != 0:
        # Workers' tracebacks come through horovodrun as "[rank]<stderr>:" lines.
        worker_errors = [
            line
            for line in (proc.stdout + proc.stderr).splitlines()
            if "<stderr>" in line and "Warning" not in line
        ]
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- workers' stderr ---\n"
            + "\n".join(worker_errors[-60:])
            + f"\n--- horovodrun ---\n{proc.stderr[-1500:]}"
        )
    return proc


def horovodrun(
    script: str,
    *args: str,
    np: int = 2,
    out: Path,
    timeout: float = 300,
    env: dict[str, str] | None = None,
    check: bool = True,
    plain_horovodrun: bool = False,
) -> subprocess.CompletedProcess:
    """Run ``tests/workers/<script>`` on ``np`` local ranks; results land in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    return run_script(
        WORKERS / script,
        "--out",
        str(out),
        *args,
        np=np,
        timeout=timeout,
        env=env,
        check=check,
        plain_horovodrun=plain_horovodrun,
    )


def run_example(script: str, *args: str, out: Path, timeout: float = 240) -> tuple[dict, str]:
    """An example (path from the repo root) on 2 ranks with ``--results``, run in ``out``:
    (the results it wrote, horovodrun's output)."""
    out.mkdir(parents=True, exist_ok=True)
    found = out / "results.json"
    proc = run_script(REPO / script, *args, "--results", str(found), timeout=timeout, cwd=out)
    return json.loads(found.read_text()), proc.stdout


def results(out: Path, np: int = 2) -> list[dict]:
    """Each rank's report, rank order."""
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(np)]


def worker_process(launcher: subprocess.Popen, rank: int, timeout: float = 120) -> psutil.Process:
    """The training process of ``rank`` under a running ``hvdtrain run``: the launcher's descendant
    whose environment says so (not one of its children)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in psutil.Process(launcher.pid).children(recursive=True):
            try:
                if (
                    p.environ().get("HOROVOD_RANK") == str(rank)
                    and "HOROVOD_RANK" not in p.parent().environ()
                ):
                    return p
            except psutil.Error:
                continue
        assert launcher.poll() is None, launcher.communicate()
        time.sleep(0.2)
    raise AssertionError(f"no worker of rank {rank} within {timeout} s")
