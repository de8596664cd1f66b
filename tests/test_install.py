"""Issue 2: Horovod as installed by scripts/install.sh works for both frameworks on 2 ranks."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.launch import REPO, horovodrun, results


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_allreduce_two_ranks(framework, tmp_path):
    horovodrun("allreduce.py", "--framework", framework, out=tmp_path, plain_horovodrun=True)
    ranks = results(tmp_path)
    inputs = np.array([r["input"] for r in ranks])
    assert [r["size"] for r in ranks] == [2, 2]
    assert not np.allclose(inputs[0], inputs[1])  # the ranks really held different data
    for r in ranks:
        np.testing.assert_allclose(r["sum"], inputs.sum(axis=0))
        np.testing.assert_allclose(r["average"], inputs.mean(axis=0))
        if framework == "tensorflow":
            np.testing.assert_allclose(r["graph_sum"], inputs.sum(axis=0))
            np.testing.assert_allclose(r["graph_average"], inputs.mean(axis=0))


def _doctor(env=None):
    return subprocess.run(
        [str(Path(sys.executable).parent / "hvdtrain"), "doctor"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.slow
def test_doctor_passes_on_this_install():
    proc = _doctor()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for line in (
        "[x] PyTorch",
        "[x] TensorFlow",
        "[x] Gloo controller",
        "[x] PyTorch allreduce x2",
        "[x] TensorFlow allreduce x2",
        "All checks passed.",
    ):
        assert line in proc.stdout, proc.stdout


def test_doctor_names_a_missing_framework(tmp_path):
    # A torch that cannot be imported, first on the path: what a half-done install looks like.
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text(
        "raise ImportError('simulated: torch is missing')\n"
    )
    proc = _doctor(env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "[ ] PyTorch" in proc.stdout
    assert "simulated: torch is missing" in proc.stdout
    assert "run `make install`" in proc.stdout
    assert "allreduce" not in proc.stdout  # no live check on a broken install
