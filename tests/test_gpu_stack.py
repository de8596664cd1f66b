"""Issue 14: the GPU path. requirements/gpu.txt, scripts/install.sh and the Dockerfile describe one
CUDA stack; a combination that cannot work is one line; ``make gpu-check`` without a GPU is one
line. The last group runs only in the gpu flavour's venv (``.venv-gpu/bin/python -m pytest
tests/test_gpu_stack.py``): CI does not build it (the CUDA compile takes most of an hour)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from hvdtrain import cudastack
from tests.launch import REPO, run_example, run_script

GPU_REQUIREMENTS = REPO / "requirements" / "gpu.txt"


def pins() -> dict[str, Requirement]:
    lines = [line.split("#")[0].strip() for line in GPU_REQUIREMENTS.read_text().splitlines()]
    return {
        r.name: r
        for r in (Requirement(line) for line in lines if line and not line.startswith("-"))
    }


def test_requirements_dockerfile_and_install_name_one_cuda():
    cuda = cudastack.pinned_cuda()
    assert cuda == "13.0"
    dockerfile = (REPO / "Dockerfile").read_text()
    base = re.search(
        r"^ARG GPU_BASE=nvidia/cuda:(\d+\.\d+)\.\d+-devel-ubuntu\d+\.\d+$", dockerfile, flags=re.M
    )
    assert base and base.group(1) == cuda, (
        "the image's CUDA toolkit must be the one Horovod is compiled with"
    )
    # cuDNN comes from the frameworks' own wheels, one per CUDA
    assert "-cudnn" not in base.group(0)
    # The image runs the gpu flavour of the one install script, on the toolkit cudastack finds.
    assert (
        "FROM base-${FLAVOR} AS frameworks" in dockerfile
        and "HVDTRAIN_FLAVOR=${FLAVOR}" in dockerfile
    )
    assert re.search(
        r"^FROM \$\{GPU_BASE\} AS base-gpu\nENV CUDA_HOME=/usr/local/cuda$", dockerfile, flags=re.M
    )
    found = pins()
    assert str(found["torch"].specifier) == "==2.14.1"  # PyPI's CUDA 13.0 build
    nccl = [name for name in found if re.match(r"nvidia-nccl-cu\d+$", name)]
    assert nccl == [f"nvidia-nccl-cu{cuda.split('.')[0]}"], "one NCCL, for the pinned CUDA"
    assert found["tensorflow"].extras == set(), "TF's and-cuda extra would add a second NCCL wheel"
    install = (REPO / "scripts" / "install.sh").read_text()
    assert "cuda_stack frameworks" in install and "cuda_stack load" in install
    assert "HOROVOD_GPU_OPERATIONS=NCCL" in install


def test_tensorflow_cuda_wheels_are_its_and_cuda_extra_without_nccl():
    """Every CUDA 12 wheel pinned for TF is one its and-cuda extra asks for, in range, and every
    one it asks for but NCCL is pinned: read from TF's own metadata where the GPU wheel is here."""
    if cudastack.installed("tensorflow") is None:
        pytest.skip(
            "needs the tensorflow wheel's metadata (the gpu flavour's venv); this venv has "
            "tensorflow-cpu"
        )
    extra = {r.name: r for r in map(Requirement, cudastack.tensorflow_facts()["cuda_wheels"])}
    found = {name: r for name, r in pins().items() if name.endswith("-cu12")}
    assert set(found) == set(extra) - {"nvidia-nccl-cu12"}
    for name, pin in found.items():
        assert extra[name].specifier.contains(next(iter(pin.specifier)).version), name


def test_cpu_torch_cannot_make_the_gpu_stack():
    if cudastack.torch_facts()["cuda"] is not None:
        pytest.skip("this venv has a CUDA torch (the gpu flavour)")
    import torch

    proc = subprocess.run(
        [sys.executable, "-m", "hvdtrain.cudastack", "frameworks"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert (proc.returncode, proc.stdout) == (
        1,
        f"torch {torch.__version__} is a CPU build; the gpu flavour needs "
        f"the CUDA build pinned in requirements/gpu.txt\n",
    )


def _no_gpu_here():
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has an NVIDIA driver: make gpu-check would run for real")


def test_make_gpu_check_without_a_gpu_is_one_line():
    _no_gpu_here()
    line = (
        "gpu-check: no GPU on this machine (no NVIDIA driver: nvidia-smi not found); nothing "
        "was checked\n"
    )
    proc = subprocess.run(
        ["bash", "scripts/gpu-check.sh"], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", line)
    proc = subprocess.run(
        ["make", "--no-print-directory", "gpu-check"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 2 and proc.stdout == "" and proc.stderr.startswith(line)


def test_hvdtrain_gpu_check_without_a_gpu_is_one_line(tmp_path):
    _no_gpu_here()
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "hvdtrain"), "gpu-check", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        1,
        "",
        "hvdtrain gpu-check: no GPU on this machine (the driver lists none, torch sees none): "
        "nothing to check\n",
    )
    assert not (tmp_path / "o").exists()


def test_compose_gpu_variant_requests_gpus_like_docker_run():
    base = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    gpu = yaml.safe_load((REPO / "docker" / "compose.gpu.yaml").read_text())
    # an override of the same job
    assert set(gpu["services"]) == {"trainer"} <= set(base["services"])
    trainer = gpu["services"]["trainer"]
    assert trainer["build"] == {
        "context": "..",
        "dockerfile": "Dockerfile",
        "args": {"FLAVOR": "gpu"},
    }
    assert trainer["image"] == "hvdtrain:gpu"
    # docker run --gpus all --ipc=host
    assert trainer["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}
    ]
    assert trainer["ipc"] == "host"
    assert trainer["command"][:3] == ["hvdtrain", "run", "-np"]


@pytest.mark.slow
def test_keras_mixed_precision_matches_fp32_accuracy(tmp_path):
    """The digits example with --mixed-precision (mixed_bfloat16, which runs on CPUs too) learns as
    well as fp32, within gpu-check's tolerance."""
    from hvdtrain.cli.gpucheck import PRECISION_TOLERANCE

    args = ("--no-tracking", "--seed", "1", "--epochs", "4")
    fp32, _ = run_example("tf_examples/digits.py", *args, out=tmp_path / "fp32")
    mixed, _ = run_example(
        "tf_examples/digits.py", *args, "--mixed-precision", out=tmp_path / "mixed"
    )
    assert fp32["metric"] > 0.8 and mixed["metric"] > 0.8
    assert abs(mixed["metric"] - fp32["metric"]) <= PRECISION_TOLERANCE, (
        fp32["metric"],
        mixed["metric"],
    )


@pytest.mark.slow
def test_torch_amp_without_a_gpu_is_refused_in_one_line():
    if cudastack.torch_facts()["cuda"] is not None and __import__("torch").cuda.is_available():
        pytest.skip("this machine has a GPU: --mixed-precision runs")
    proc = run_script(
        REPO / "torch_examples" / "digits.py", "--no-tracking", "--mixed-precision", check=False
    )
    assert proc.returncode == 1
    assert (
        "rank 0: --mixed-precision (torch AMP, fp16 with a gradient scaler) needs a GPU; this "
        "worker has none" in proc.stdout + proc.stderr
    )


# --- the gpu flavour's own venv ----------------------------------------------------------------


def _gpu_build():
    if cudastack.torch_facts()["cuda"] is None:
        pytest.skip(
            "needs the gpu flavour's venv (HVDTRAIN_FLAVOR=gpu HVDTRAIN_VENV=.venv-gpu make "
            "install)"
        )


def test_gpu_build_lists_nccl():
    _gpu_build()
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "horovodrun"), "--check-build"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    for feature in ("TensorFlow", "PyTorch", "Gloo", "NCCL"):
        assert re.search(rf"\[X\] {feature}", proc.stdout), proc.stdout


def test_gpu_stack_checks_pass_and_load_one_nccl():
    _gpu_build()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    frameworks = subprocess.run(
        [sys.executable, "-m", "hvdtrain.cudastack", "frameworks"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env=env,
    )
    assert frameworks.returncode == 0, frameworks.stdout + frameworks.stderr
    assert "nvidia-nccl-cu13 2.30.7" in frameworks.stdout
    load = subprocess.run(
        [sys.executable, "-m", "hvdtrain.cudastack", "load"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env=env,
    )
    assert load.returncode == 0, load.stdout + load.stderr
    lines = load.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "torch then tensorflow",
        "tensorflow then torch",
    ]
    for line in lines:
        assert "Horovod NCCL 2.30.7 ops, one libnccl.so.2 = NCCL 2.30.7" in line


def test_doctor_reports_the_nccl_build_and_no_gpu_in_one_line():
    _gpu_build()
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "hvdtrain"), "doctor"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for line in (
        "[x] NCCL ops                  built (NCCL 2.30.7)",
        "[x] torch CUDA                torch 2.14.1",
        "[x] NCCL library              nvidia-nccl-cu13 2.30.7 (CUDA 13)",
        "[x] one process               torch, TensorFlow and Horovod's NCCL ops load together",
        "All checks passed.",
    ):
        assert line in proc.stdout, proc.stdout
    if not shutil.which("nvidia-smi"):
        assert (
            "[x] GPUs                      none on this machine: the NCCL build is checked, not "
            "run (live GPU allreduce skipped)"
        ) in proc.stdout
