"""The Horovod build against what runs: Horovod is compiled against one torch, one TensorFlow and
one Python, and a later ``pip install`` of another torch leaves it loading a mismatched extension
(an undefined-symbol error deep in an import, or worse, a crash in training).

``scripts/install.sh`` records the build key ``horovod-<ver>-torch<v>-tf<v>-cuda<v>-py<v>-<hash>``
in ``<venv>/.hvdtrain-horovod`` (and the controllers it found in ``.hvdtrain-horovod.json``, and in
``.hvdtrain-horovod-python`` the Python fixes it applied to Horovod's installed files);
each adapter calls ``check`` before it imports Horovod, and ``hvdtrain doctor`` shows the same
lines. Versions are read from the installed packages'
metadata, so nothing here imports a framework.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from .guards import UserError

KEY_FILE = ".hvdtrain-horovod"
INFO_FILE = ".hvdtrain-horovod.json"  # {"key": ..., "controllers": [...]}
# The fingerprint of the Python fixes install.sh applied to the installed Horovod (Keras 3 APIs).
PYTHON_FIXES_FILE = ".hvdtrain-horovod-python"
FIX = "run make install"
_KEY = re.compile(
    r"horovod-(?P<horovod>[^-]+)-torch(?P<torch>.+)-tf(?P<tensorflow>.+)-cuda(?P<cuda>.+)"
    r"-py(?P<python>\d+)-(?P<flags>[0-9a-f]+)"
)
# Distributions that provide each package (TensorFlow ships as several wheels).
DISTRIBUTIONS = {
    "horovod": ("horovod",),
    "torch": ("torch",),
    "tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-gpu"),
}
# What each adapter's Horovod extension was compiled against.
NEEDS = {"torch": ("horovod", "torch", "python"), "keras": ("horovod", "tensorflow", "python")}


class BuildMismatchError(UserError):
    """The Horovod build does not match the running frameworks; every rank of a host says the same,
    so its first local rank prints it."""

    per_host = True


@dataclass(frozen=True)
class BuildKey:
    horovod: str
    torch: str
    tensorflow: str
    cuda: str
    python: str
    flags: str

    @classmethod
    def parse(cls, text: str) -> BuildKey | None:
        match = _KEY.fullmatch(text.strip())
        return cls(**match.groupdict()) if match else None


def recorded(prefix: str = sys.prefix) -> BuildKey | None:
    """The key of the Horovod build installed in ``prefix`` (None: not installed by install.sh)."""
    try:
        return BuildKey.parse((Path(prefix) / KEY_FILE).read_text())
    except OSError:
        return None


def controllers(prefix: str = sys.prefix) -> set[str] | None:
    """The controllers (``gloo``, ``mpi``) of the installed build, as install.sh's
    ``horovodrun --check-build`` found them; None when not recorded for this build."""
    try:
        info = json.loads((Path(prefix) / INFO_FILE).read_text())
        if info["key"] == (Path(prefix) / KEY_FILE).read_text().strip():
            return set(info["controllers"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def installed(distribution: str) -> str | None:
    """The installed version of ``distribution`` (None: not installed), from its metadata."""
    try:
        return md.version(distribution)
    except md.PackageNotFoundError:
        return None


def running(package: str) -> str | None:
    """The version of ``package`` this interpreter would import, as install.sh records it."""
    if package == "python":
        return f"{sys.version_info[0]}{sys.version_info[1]}"
    for distribution in DISTRIBUTIONS[package]:
        version = installed(distribution)
        if version is not None:
            return version.split("+")[0]  # 2.13.0+cpu is torch 2.13.0
    return None


def mismatches(framework: str | None = None, key: BuildKey | None = None) -> list[str]:
    """One line per package whose running version differs from the build (``framework``: only
    what that adapter's extension needs; None: everything recorded)."""
    key = key or recorded()
    if key is None:
        return []
    found = []
    for package in NEEDS.get(framework, ("horovod", "torch", "tensorflow", "python")):
        built, now = getattr(key, package), running(package)
        if built == "None" and package == "tensorflow":
            continue  # built without TensorFlow: the Keras adapter's own import says so
        if built == now:
            continue
        if package == "horovod":
            found.append(
                f"Horovod {_version(package, now)} is installed, not the build make install "
                f"recorded ({built})"
            )
        else:
            found.append(
                f"Horovod was built for {_name(package)} {_version(package, built)}, running "
                f"{_version(package, now)}"
            )
    if framework in ("keras", None) and not (Path(sys.prefix) / PYTHON_FIXES_FILE).exists():
        found.append("Horovod's TensorFlow and Keras files lack hvdtrain's Keras 3 fixes")
    return found


def check(framework: str) -> None:
    """``BuildMismatchError`` naming the first mismatch and the host, before Horovod is imported."""
    found = mismatches(framework)
    if found:
        from . import failures  # the error is raised at import time, before init() installs this

        failures.install()
        raise BuildMismatchError(f"{found[0]} on {socket.gethostname()}: {FIX}")


def _name(package: str) -> str:
    return {"python": "Python", "tensorflow": "TensorFlow"}.get(package, package)


def _version(package: str, version: str | None) -> str:
    if version is None:
        return "none (not installed)"
    return f"{version[0]}.{version[1:]}" if package == "python" else version
