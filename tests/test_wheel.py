"""Issue 23, item 2: the library stands without its checkout. The wheel ``pip wheel`` builds from a
copy of the sources, installed into a fresh virtualenv, runs ``hvdtrain run``, ``bench`` (with its
GPT rows), ``doctor`` and ``ui`` from a directory outside the checkout, none of it able to import
the checkout: the new virtualenv sees the project's frameworks and Horovod through a ``.pth`` line
naming the project's site-packages, whose own ``.pth`` files (the editable install of hvdtrain)
are therefore never read.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.launch import REPO

SCRIPT = """\
import hvdtrain, hvdtrain.torch as ht
ctx = ht.init()
total = ht.average_metrics({"rank": float(ctx.rank)})["rank"]
if ctx.rank == 0:
    print(f"hvdtrain from {hvdtrain.__file__}; mean rank {total}")
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """The wheel installed in a fresh virtualenv; its ``bin`` and a working directory outside
    the checkout."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"  # pip builds in the source tree: a copy keeps the checkout clean
    source.mkdir()
    for name in ("setup.py", "README.md"):
        shutil.copy(REPO / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("hvdtrain", "requirements"):
        shutil.copytree(REPO / name, source / name, symlinks=True, ignore=ignore)
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(root / "dist"),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    [wheel] = (root / "dist").glob("hvdtrain-*.whl")
    venv = root / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
    )
    site = Path(
        subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-c",
                "import sysconfig; print(sysconfig.get_path('purelib'))",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # frameworks, Horovod, pip
    (site / "project.pth").write_text(sysconfig.get_path("purelib") + "\n")
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    work = root / "work"
    work.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI", "VIRTUAL_ENV")
    }
    return {
        "bin": venv / "bin",
        "site": site,
        "work": work,
        "env": {**env, "TF_CPP_MIN_LOG_LEVEL": "3"},
    }


def hvdtrain(installed: dict, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(installed["bin"] / "hvdtrain"), *args],
        capture_output=True,
        text=True,
        cwd=installed["work"],
        env=installed["env"],
        timeout=timeout,
    )


@pytest.mark.slow
def test_the_wheel_holds_the_package_data_and_no_other_hvdtrain_is_importable(installed):
    python = installed["bin"] / "python"
    code = (
        "import hvdtrain, hvdtrain.cudastack as c, hvdtrain.models.torch_gpt as g, "
        "hvdtrain.models.keras_gpt as k\nimport os, sys\nhomes = [p for p in sys.path if "
        "os.path.isfile(os.path.join(p or '.', 'hvdtrain', '__init__.py'))]\n"
        "print(hvdtrain.__file__, c.pinned_cuda(), g.__file__, k.__file__, *homes)"
    )
    found = subprocess.run(
        [str(python), "-c", code],
        capture_output=True,
        text=True,
        cwd=installed["work"],
        env=installed["env"],
        timeout=120,
    )
    site = installed["site"]
    pinned = next(
        line.split(":")[1].strip()
        for line in (REPO / "requirements" / "gpu.txt").read_text().splitlines()
        if line.startswith("# hvdtrain-cuda:")
    )
    assert found.stdout.split() == [
        str(site / "hvdtrain" / "__init__.py"),
        pinned,
        str(site / "hvdtrain" / "models" / "torch_gpt.py"),
        str(site / "hvdtrain" / "models" / "keras_gpt.py"),
        str(site),
    ], found.stderr


@pytest.mark.slow
def test_run(installed):
    (installed["work"] / "mean_rank.py").write_text(SCRIPT)
    proc = hvdtrain(installed, "run", "-np", "2", "mean_rank.py")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert (
        lines[0] == f"hvdtrain from {installed['site'] / 'hvdtrain' / '__init__.py'}; mean rank 0.5"
    )
    assert lines[1].startswith(
        "hvdtrain: job finished: 2 workers on 1 host (localhost), wall time "
    )
    assert len(lines) == 2


@pytest.mark.slow
def test_bench_has_its_gpt_rows(installed):
    """torch's rows: the GPT of both frameworks comes from the package the same way
    (``hvdtrain.models``, imported from the wheel in the test above); Keras's start-up
    would double the test's time."""
    proc = hvdtrain(
        installed, "bench", "--quick", "--windows", "1", "--parts", "torch", "--out", "bench"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((installed["work"] / "bench" / "bench.json").read_text())
    rows = {(r["framework"], r["model"], r["np"]) for r in result["steps"]}
    assert rows == {("torch", m, np) for m in ("mlp", "gpt") for np in (1, 2)}


@pytest.mark.slow
def test_doctor(installed):
    proc = hvdtrain(installed, "doctor")
    assert proc.returncode == 0, proc.stdout[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[-1] == "All checks passed."
    live = [line.split("pass in")[0].rstrip() for line in lines if "allreduce x2" in line]
    assert live == ["  [x] PyTorch allreduce x2", "  [x] TensorFlow allreduce x2"]


@pytest.mark.slow
def test_ui_serves_the_local_store(installed):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [str(installed["bin"] / "hvdtrain"), "ui", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=installed["work"],
        env=installed["env"],
    )
    try:
        first = proc.stdout.readline().strip()
        store = f"sqlite:///{installed['work'] / 'mlflow.db'}"
        assert first == f"MLflow UI on http://127.0.0.1:{port} (store: {store}); Ctrl-C stops it"
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as page:
                    assert page.status == 200 and b"MLflow" in page.read()
                    break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()[
                    -3000:
                ]
                time.sleep(1)
        serving = psutil.Process(proc.pid).children(recursive=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # A SIGTERM stops the whole UI: its web server and job workers too (they once outlived it).
    _, alive = psutil.wait_procs(serving, timeout=30)
    assert not alive, [process.cmdline() for process in alive]
