"""Issue 23, item 4: the lint holds inside the suite too, so a change that skips ``make lint``
still fails CI. ruff checks and formats the whole repository with ``pyproject.toml``'s
configuration, at the version ``requirements/dev.txt`` pins (another version may format
differently); hadolint on the Dockerfile is ``tests/test_docker.py``'s."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys

import pytest

from tests.launch import REPO


def _ruff(*args: str) -> subprocess.CompletedProcess:
    pinned = re.search(r"^ruff==(\S+)$", (REPO / "requirements" / "dev.txt").read_text(), re.M)
    assert pinned, "requirements/dev.txt pins no ruff"
    try:
        installed = importlib.metadata.version("ruff")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("ruff not found: it is installed by scripts/install.sh (requirements/dev.txt)")
    assert installed == pinned.group(1), (
        f"ruff {installed} installed, {pinned.group(1)} pinned: run make install"
    )
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, "--no-cache", "."],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_ruff_finds_nothing():
    proc = _ruff("check")
    assert (proc.returncode, proc.stdout) == (0, "All checks passed!\n"), proc.stdout + proc.stderr


def test_ruff_format_would_change_no_file():
    proc = _ruff("format", "--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.fullmatch(r"\d+ files already formatted\n", proc.stdout), proc.stdout + proc.stderr
