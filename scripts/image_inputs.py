"""What ``make image`` hands the Docker build from this machine, without baking it into a layer.

* ``pip_conf`` / ``pip_ca`` (build secrets): pip's effective settings here that mean something
  inside the build (index URLs that may carry a token, proxy, timeouts) and the CA bundle pip
  trusts (a proxy's certificate): the build reaches the same indexes as this machine, and neither
  file is in the image or its history.
* ``docker/wheels``: wheels from pip's ``find-links`` directories here whose name and version a
  requirement file of the image pins (torch's CPU build where PyTorch's index is out of reach), and
  the Horovod wheels ``scripts/install.sh`` compiled here when this machine runs the image's Debian
  release (a wheel compiled against another C library could not load in the image; its cache key
  already names the Python, framework versions and build flags).

Usage: ``python3 scripts/image_inputs.py OUT_SECRETS_DIR FLAVOR "EXTRAS" BASE_OS_RELEASE`` prints
``torch_cpu_index=<yes|no>`` (whether the build still needs PyTorch's CPU index) and what it staged.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WHEELS = REPO / "docker" / "wheels"
# pip settings that work the same inside the build; host paths (find-links, constraint) do not.
PORTABLE = {
    "index-url",
    "extra-index-url",
    "trusted-host",
    "proxy",
    "timeout",
    "default-timeout",
    "retries",
}


def pip_settings() -> dict[str, str]:
    """``pip config list`` of this machine's python3:
    files and PIP_* variables, the latter winning."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    settings: dict[str, str] = {}
    for line in sorted(out.splitlines(), key=lambda line: line.startswith(":env:")):
        match = re.match(r"^([^.]*)\.([\w-]+)='(.*)'$", line)
        if match and match.group(1) in ("global", "install", "download", ":env:"):
            settings[match.group(2)] = match.group(3)
    return settings


def write_secrets(settings: dict[str, str], out: Path) -> None:
    """pip.conf for the build, and the CA bundle it names, both owner-only."""
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    lines = ["[global]"]
    for key, value in settings.items():
        if key == "extra-index-url":  # file:// indexes are directories of this machine
            value = " ".join(url for url in value.split() if not url.startswith("file:"))
        if key in PORTABLE and value:
            lines.append(f"{key} = {value}")
    cert = settings.get("cert")
    if cert and Path(cert).is_file():
        shutil.copyfile(cert, out / "pip_ca")
        (out / "pip_ca").chmod(0o600)
        lines.append("cert = /run/secrets/pip_ca")
    conf = out / "pip_conf"
    conf.write_text("\n".join(lines) + "\n")
    conf.chmod(0o600)


def pins(flavor: str, extras: list[str]) -> dict[str, str]:
    """name -> version of every ``name==version`` line the image installs (``-r`` followed)."""
    found: dict[str, str] = {}
    todo = [REPO / "requirements" / f"{name}.txt" for name in [flavor, *extras]]
    while todo:
        for line in todo.pop().read_text().splitlines():
            line = line.split("#")[0].strip()
            if line.startswith("-r"):
                todo.append(REPO / "requirements" / line[2:].strip())
            elif "==" in line:
                name, version = line.split("==")
                found[re.sub(r"[-_.]+", "_", name.strip().lower())] = version.strip()
    return found


def link(source: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        try:
            os.link(source, dest)
        except OSError:  # another file system
            shutil.copyfile(source, dest)


def stage_wheels(
    settings: dict[str, str], flavor: str, extras: list[str], base_os: str
) -> list[str]:
    """Fill docker/wheels afresh; returns the staged files' names."""
    for old in WHEELS.glob("*"):
        if old.name != "README.md":
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    wanted = pins(flavor, extras)
    staged = []
    for directory in settings.get("find-links", "").split():
        for wheel in sorted(Path(directory).glob("*.whl")) if Path(directory).is_dir() else []:
            name, version = wheel.name.split("-")[:2]
            if wanted.get(name.lower()) == version.split("+")[0]:
                link(wheel, WHEELS / wheel.name)
                staged.append(wheel.name)
    if Path("/etc/os-release").read_text().strip() == base_os.strip():
        cache = Path(
            os.environ.get("HVDTRAIN_CACHE")
            or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "hvdtrain")
        )
        for wheel in sorted(cache.glob("wheels/*/horovod-*.whl")):
            link(wheel, WHEELS / "horovod" / wheel.parent.name / wheel.name)
            staged.append(f"horovod/{wheel.parent.name}/{wheel.name}")
    return staged


def main() -> None:
    out, flavor, extras, base_os = Path(sys.argv[1]), sys.argv[2], sys.argv[3].split(), sys.argv[4]
    settings = pip_settings()
    write_secrets(settings, out)
    staged = stage_wheels(settings, flavor, extras, base_os)
    local_torch = any(name.startswith("torch-") and "+cpu" in name for name in staged)
    print(f"torch_cpu_index={'no' if local_torch or flavor != 'cpu' else 'yes'}")
    for name in staged:
        print(f"staged={name}")


if __name__ == "__main__":
    main()
