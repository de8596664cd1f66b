"""The CUDA stack of a GPU install: which CUDA each part was built for, and whether they can share
one process.

torch 2.14.1 (PyPI's CUDA 13.0 build), Horovod's NCCL ops (compiled here with nvcc 13.0, linked
against the NCCL that torch pins) and TensorFlow 2.21 (built for CUDA 12, with its own
``libcudart.so.12``...) load together because their CUDA libraries have different sonames; the
one library they must share is ``libnccl.so.2``, so exactly one NCCL wheel may be installed
(``requirements/gpu.txt`` says why). ``scripts/install.sh`` runs ``python -m hvdtrain.cudastack
frameworks`` before compiling Horovod and ``python -m hvdtrain.cudastack load`` after it: each
prints one line naming what cannot work and exits 1. ``hvdtrain doctor`` reports the same facts.

Standard library only at import time (install.sh runs it before hvdtrain is installed).
"""

from __future__ import annotations

import ctypes
import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .core.versions import installed

REQUIREMENTS = Path(__file__).parent / "requirements" / "gpu.txt"  # package data (setup.py)
NCCL_DIST = re.compile(r"^nvidia-nccl-cu(\d+)$")
CUDA_PIN = re.compile(r"^# hvdtrain-cuda: (\d+\.\d+)\s*$", re.M)


class StackError(Exception):
    """A combination that cannot work; the message is the one line the user sees."""


@dataclass(frozen=True)
class NcclWheel:
    dist: str  # nvidia-nccl-cu13
    version: str
    cuda_major: int


def pinned_cuda(requirements: Path = REQUIREMENTS) -> str:
    """The CUDA version (major.minor) requirements/gpu.txt is built for: nvcc, torch, the image."""
    match = CUDA_PIN.search(requirements.read_text())
    if not match:
        raise StackError(f"{requirements} has no '# hvdtrain-cuda: X.Y' line")
    return match.group(1)


def cuda_home() -> Path | None:
    """The CUDA toolkit Horovod compiles with: $CUDA_HOME, /usr/local/cuda, or nvcc's parent."""
    for candidate in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if candidate and Path(candidate, "bin", "nvcc").exists():
            return Path(candidate)
    nvcc = shutil.which("nvcc")
    return Path(nvcc).resolve().parent.parent if nvcc else None


def nvcc_version(home: Path | None) -> str | None:
    """``13.0`` from ``nvcc --version`` ('... release 13.0, V13.0.88')."""
    if home is None:
        return None
    out = subprocess.run(
        [str(home / "bin" / "nvcc"), "--version"], capture_output=True, text=True
    ).stdout
    match = re.search(r"release (\d+\.\d+)", out)
    return match.group(1) if match else None


def nccl_wheels() -> list[NcclWheel]:
    found = []
    for dist in md.distributions():
        match = NCCL_DIST.match((dist.metadata["Name"] or "").lower())
        if match:
            found.append(NcclWheel(match.group(0), dist.version, int(match.group(1))))
    return sorted(found, key=lambda w: w.dist)


def nccl_file_owner() -> str | None:
    """The installed wheel whose RECORD lists nvidia/nccl/lib/libnccl.so.2 with the file's size
    on disk: when two NCCL wheels were installed, the last one pip wrote owns the file."""
    for wheel in nccl_wheels():
        for file in md.distribution(wheel.dist).files or ():
            if file.as_posix() == "nvidia/nccl/lib/libnccl.so.2" and file.size is not None:
                path = Path(file.locate())
                if path.exists() and path.stat().st_size == file.size:
                    return f"{wheel.dist} {wheel.version}"
    return None


def torch_facts() -> dict:
    import torch

    return {
        "version": torch.__version__,
        "cuda": torch.version.cuda,
        "requires": [
            str(r) for r in md.requires("torch") or () if NCCL_DIST.match(r.split("=")[0].strip())
        ],
    }


def tensorflow_facts() -> dict:
    """TF's version, the CUDA/cuDNN it was built for and the CUDA wheels of its
    ``and-cuda`` extra."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    info = tf.sysconfig.get_build_info()
    dist = next((d for d in ("tensorflow", "tensorflow-cpu") if installed(d)), None)
    extra = [r for r in md.requires(dist) or () if 'extra == "and-cuda"' in r] if dist else []
    return {
        "dist": dist,
        "version": tf.__version__,
        "cuda_build": bool(info.get("is_cuda_build")),
        "cuda": info.get("cuda_version"),
        "cudnn": info.get("cudnn_version"),
        "cuda_wheels": [r.split(";")[0].strip() for r in extra],
    }


def check_frameworks() -> list[str]:
    """What this venv's torch, TensorFlow, NCCL wheels and CUDA toolkit are; StackError when they
    cannot build or run Horovod's NCCL ops together. Runs before Horovod is compiled."""
    from packaging.requirements import Requirement

    torch = torch_facts()
    if torch["cuda"] is None:
        raise StackError(
            f"torch {torch['version']} is a CPU build; the gpu flavour needs the CUDA build "
            f"pinned in requirements/gpu.txt"
        )
    home = cuda_home()
    nvcc = nvcc_version(home)
    if nvcc is None:
        raise StackError(
            "no CUDA toolkit (nvcc) found in $CUDA_HOME, /usr/local/cuda or on the PATH: "
            f"Horovod's NCCL ops for torch {torch['version']} need nvcc {torch['cuda']}"
        )
    if nvcc.split(".")[0] != torch["cuda"].split(".")[0]:
        raise StackError(
            f"nvcc {nvcc} ({home}) cannot build Horovod for torch {torch['version']} (CUDA "
            f"{torch['cuda']}): the CUDA major versions differ; use a CUDA {torch['cuda']} toolkit"
        )
    wheels = nccl_wheels()
    if len(wheels) != 1:
        names = ", ".join(f"{w.dist} {w.version}" for w in wheels) or "none"
        owner = nccl_file_owner() if wheels else None
        raise StackError(
            f"exactly one NCCL wheel must be installed, found: {names}"
            + (f"; they share nvidia/nccl/lib/libnccl.so.2, now {owner}'s" if owner else "")
            + " (TensorFlow's and-cuda extra adds nvidia-nccl-cu12: install requirements/gpu.txt)"
        )
    nccl = wheels[0]
    if str(nccl.cuda_major) != torch["cuda"].split(".")[0]:
        raise StackError(
            f"{nccl.dist} {nccl.version} is built for CUDA {nccl.cuda_major}, torch "
            f"{torch['version']} for CUDA {torch['cuda']}: install the NCCL wheel torch requires "
            f"({', '.join(torch['requires'])})"
        )
    for pin in torch["requires"]:
        if Requirement(pin).name == nccl.dist and not Requirement(pin).specifier.contains(
            nccl.version
        ):
            raise StackError(
                f"torch {torch['version']} requires {pin}, found {nccl.dist} {nccl.version}"
            )
    tf = tensorflow_facts()
    if not tf["cuda_build"]:
        raise StackError(
            f"{tf['dist']} {tf['version']} is a CPU build: Keras would train on the CPU of a GPU "
            "host; install tensorflow (requirements/gpu.txt)"
        )
    for text in tf["cuda_wheels"]:
        requirement = Requirement(text)
        if NCCL_DIST.match(requirement.name):
            continue  # the one NCCL is torch's (TensorFlow does not load NCCL)
        version = installed(requirement.name)
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            raise StackError(
                f"TensorFlow {tf['version']} (CUDA {tf['cuda']}) needs {text} (its and-cuda "
                f"extra), found {version or 'none'}: install requirements/gpu.txt"
            )
    return [
        f"torch {torch['version']} (CUDA {torch['cuda']}), nvcc {nvcc} ({home}), {nccl.dist} "
        f"{nccl.version}, TensorFlow {tf['version']} (CUDA {tf['cuda']}, cuDNN {tf['cudnn']})"
    ]


def loaded_libraries(pattern: str) -> list[str]:
    """Paths of the shared libraries matching ``pattern`` mapped into this process."""
    found = set()
    for line in Path("/proc/self/maps").read_text().splitlines():
        path = line.split()[-1] if line.count("/") else ""
        if re.search(pattern, Path(path).name):
            found.add(os.path.realpath(path))
    return sorted(found)


def nccl_version(library: str) -> str:
    """The version ``ncclGetVersion`` of an NCCL library reports, e.g. ``2.30.7``."""
    code = ctypes.c_int()
    ctypes.CDLL(library).ncclGetVersion(ctypes.byref(code))
    major, rest = divmod(code.value, 10000)
    return f"{major}.{rest // 100}.{rest % 100}"


def load_in_one_process(first: str) -> str:
    """Import torch and TensorFlow (``first`` first) and both Horovod extensions, ``hvd.init()``
    each on the CPU, and check that one NCCL, at least the one Horovod was compiled with, is
    mapped; returns a summary line or raises StackError."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    order = ["torch", "tensorflow"] if first == "torch" else ["tensorflow", "torch"]
    for module in order:
        __import__(module)
    import horovod.tensorflow as hvd_tf
    import horovod.torch as hvd_torch

    built = hvd_torch.nccl_built()
    if not built:
        raise StackError("Horovod was built without NCCL")
    for hvd in (hvd_torch, hvd_tf):
        hvd.init()
    libraries = loaded_libraries(r"^libnccl\.so")
    if len(libraries) != 1:
        raise StackError(
            f"{len(libraries)} NCCL libraries loaded in one process "
            f"({', '.join(libraries) or 'none'}); want exactly one"
        )
    loaded = nccl_version(libraries[0])
    compiled = f"{built // 10000}.{built % 10000 // 100}.{built % 100}"
    if tuple(map(int, loaded.split("."))) < tuple(map(int, compiled.split("."))):
        raise StackError(
            f"NCCL {loaded} ({libraries[0]}) is older than the NCCL {compiled} Horovod was "
            "compiled with"
        )
    runtimes = ", ".join(Path(p).name for p in loaded_libraries(r"^libcudart\.so"))
    for hvd in (hvd_tf, hvd_torch):
        hvd.shutdown()
    return (
        f"{' then '.join(order)}: Horovod NCCL {compiled} ops, one libnccl.so.2 = NCCL {loaded}, "
        f"CUDA runtimes {runtimes or 'none yet'}"
    )


def check_load() -> list[str]:
    """``load_in_one_process`` in a fresh interpreter for each import order."""
    lines = []
    for first in ("torch", "tensorflow"):
        proc = subprocess.run(
            [sys.executable, "-m", "hvdtrain.cudastack", "load-one", first],
            capture_output=True,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        if proc.returncode != 0:
            last = (proc.stdout + proc.stderr).strip().splitlines()
            raise StackError(
                f"importing {first} first: {last[-1] if last else f'exit {proc.returncode}'}"
            )
        lines.append(proc.stdout.strip().splitlines()[-1])
    return lines


def gpus() -> tuple[list[str], str | None]:
    """The GPUs torch can use, and why none can be used when the driver lists some (or None).

    ``nvidia-smi -L`` is the driver's own list, so a GPU torch cannot use (a driver older than
    the CUDA torch was built for) is a problem, not "no GPU"."""
    import torch

    names = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else []
    )
    smi = shutil.which("nvidia-smi")
    listed = []
    if smi:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True).stdout
        listed = [line for line in out.splitlines() if line.startswith("GPU ")]
    if listed and not names:
        return [], (
            f"the driver lists {len(listed)} GPU(s) but torch {torch.__version__} cannot use them "
            f"(CUDA {torch.version.cuda} needs a driver that supports it: see nvidia-smi)"
        )
    return names, None


def main(argv: list[str]) -> int:
    commands = {
        "frameworks": check_frameworks,
        "load": check_load,
        "load-one": lambda: [load_in_one_process(argv[1])],
    }
    if not argv or argv[0] not in commands:
        print(f"usage: python -m hvdtrain.cudastack {'|'.join(commands)}", file=sys.stderr)
        return 2
    try:
        lines = commands[argv[0]]()
    except StackError as err:
        print(err)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
