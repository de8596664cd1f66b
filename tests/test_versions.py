"""Issue 13, item 2: Horovod is compiled against one torch, one TensorFlow and one Python; a job on
other versions stops at once with one line, ``hvdtrain doctor`` says the same, and setup.py keeps
every framework within the tested range.

A framework "upgraded after install" is a distribution record of a newer version placed first on
``PYTHONPATH``: what ``pip install torch==<newer>`` leaves for ``importlib.metadata`` to find.
"""

import ast
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from hvdtrain.core import versions
from tests import docs_table
from tests.launch import REPO

BUILT = versions.recorded()
NEWER = {"torch": ("torch", "2.14.1"), "keras": ("tensorflow", "2.22.0")}


def upgraded(tmp_path: Path, distribution: str, version: str) -> dict[str, str]:
    info = tmp_path / f"{distribution}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n"
    )
    return {
        **os.environ,
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}",
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }


@pytest.fixture(autouse=True)
def installed_by_install_sh():
    if BUILT is None:
        pytest.fail(
            f"no Horovod build key in {sys.prefix}: install with `make install`", pytrace=False
        )


@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_a_framework_other_than_horovods_build_stops_the_job_in_one_line(tmp_path, framework):
    distribution, version = NEWER[framework]
    env = upgraded(tmp_path, distribution, version)
    code = f"import hvdtrain.{framework} as adapter\nadapter.init()\nprint('trained')"
    name = "torch" if framework == "torch" else "TensorFlow"
    want = (
        f"hvdtrain: error: Horovod was built for {name} {getattr(BUILT, distribution)}, running "
        f"{version} on {socket.gethostname()}: run make install"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert (proc.returncode, proc.stdout, proc.stderr.strip().splitlines()) == (1, "", [want])
    if framework == "torch":
        row = docs_table.row(
            "torch or TensorFlow upgraded after make install (Horovod was compiled against the "
            "old one)"
        )
        assert row.check(proc.stderr, proc.returncode, HOST=socket.gethostname()) == want
    # Under horovodrun every rank of the host stops the same way; its first local rank says so.
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "HOROVOD_LOCAL_RANK": "1"},
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", "")


def test_doctor_names_the_mismatch_not_a_missing_framework(tmp_path):
    env = upgraded(tmp_path, "torch", "2.14.1")
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "hvdtrain"), "doctor"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )
    line = f"Horovod was built for torch {BUILT.torch}, running 2.14.1: run make install"
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"  [ ] Build key                 {line}" in proc.stdout.splitlines()
    assert f"  [ ] PyTorch                   {line}" in proc.stdout.splitlines()
    assert "  [x] TensorFlow                built" in proc.stdout.splitlines()
    assert "allreduce" not in proc.stdout  # no live check on a mismatched install


def test_setup_py_bounds_every_framework_to_the_tested_release():
    tree = ast.parse((REPO / "setup.py").read_text())
    call = next(
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup"
    )
    found = {
        kw.arg: ast.literal_eval(kw.value)
        for kw in call.keywords
        if kw.arg in ("install_requires", "extras_require")
    }
    required = {
        r.name: r.specifier
        for r in map(
            Requirement, [*found["install_requires"], *sum(found["extras_require"].values(), [])]
        )
    }
    pinned = {}
    for flavour in ("cpu", "gpu"):
        for line in (REPO / "requirements" / f"{flavour}.txt").read_text().splitlines():
            if "==" in line and not line.startswith(("#", "-")):
                requirement = Requirement(line)
                pinned[requirement.name.replace("-cpu", "").split("[")[0]] = str(
                    requirement.specifier
                )[2:]
    for framework in ("torch", "tensorflow", "keras", "mlflow"):
        specifier = required[framework]
        assert any(spec.operator in ("<", "<=", "==", "~=") for spec in specifier), (
            f"{framework}: no upper bound"
        )
        assert pinned[framework] in specifier, (
            f"{framework} {pinned[framework]} (tested) outside {specifier}"
        )
