"""Where a job's workers run, as the user names the hosts: ``-H host:slots,...``, a hostfile of
``host slots=N`` lines, or an elastic job's discovery script (run once before launch, as
horovodrun will run it); and which rank lands on which host, by Horovod's own assignment.
Each bad input is a ``UsageError`` of one line.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from pathlib import Path

from ..core.errors import UsageError

Hosts = list[tuple[str, int]]  # (host, slots), rank order
DISCOVERY_TIMEOUT_S = 5


def parse_host_list(text: str) -> Hosts:
    """``node1:4,node2`` (slots default to 1)."""
    hosts = []
    for item in text.split(","):
        if item.strip().startswith("[") or item.count(":") > 1:
            # horovodrun splits host:slots at its colons and cannot start a worker on ::1.
            raise UsageError(
                f"bad host {item.strip()!r}: horovodrun takes no IPv6 address; use a host name "
                "for it (localhost for ::1, else an /etc/hosts entry)"
            )
        match = re.fullmatch(r"\s*([^:\s]+)(?::(\d+))?\s*", item)
        if not match:
            raise UsageError(f"bad host {item!r}: use host:slots, e.g. node1:4")
        hosts.append((match.group(1), int(match.group(2) or 1)))
    return hosts


def read_hostfile(path: Path) -> Hosts:
    """``host slots=N`` lines (``slots`` defaults to 1; ``#`` starts a comment),
    as MPI reads them."""
    if path.is_dir():
        raise UsageError(f"hostfile {path} is a directory: name a file of 'host slots=N' lines")
    if not path.is_file():
        raise UsageError(f"hostfile not found: {path}")
    hosts = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        colon = re.fullmatch(r"([^:\s]+):(\d+)", text)
        if colon:  # -H's syntax: read as is, it would name a host "localhost:2"
            raise UsageError(
                f"hostfile {path} line {number}: {text!r} is -H syntax; a hostfile line is "
                f"'{colon.group(1)} slots={colon.group(2)}'"
            )
        match = re.fullmatch(r"(\S+)(?:\s+slots\s*=\s*(\d+))?", text)
        if not match:
            raise UsageError(f"hostfile {path} line {number}: {text!r} is not 'host slots=N'")
        hosts.append((match.group(1), int(match.group(2) or 1)))
    if not hosts:
        raise UsageError(f"hostfile {path} lists no hosts ('host slots=N' lines)")
    return hosts


def discover_hosts(script: str) -> Hosts:
    """Run the host discovery script as horovodrun will, and check what it prints."""
    path = Path(script)
    if not path.is_file():
        raise UsageError(f"host discovery script not found: {script}")
    if not os.access(path, os.X_OK):
        raise UsageError(f"host discovery script {script} is not executable (chmod +x {script})")
    try:
        done = subprocess.run(
            [str(path.absolute())], capture_output=True, text=True, timeout=DISCOVERY_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        raise UsageError(
            f"host discovery script {script} did not finish within {DISCOVERY_TIMEOUT_S} s "
            f"(horovodrun runs it every second)"
        ) from None
    except OSError as err:
        raise UsageError(
            f"host discovery script {script} cannot run: {err.strerror or err}"
        ) from None
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or ["no error output"])[-1]
        raise UsageError(
            f"host discovery script {script} exited with status {done.returncode}: {detail}"
        )
    hosts = []
    for line in filter(None, (raw.strip() for raw in done.stdout.splitlines())):
        match = re.fullmatch(r"([^:\s]+):([1-9]\d*)", line)
        if not match:
            raise UsageError(
                f"host discovery script {script} printed {line!r}: expected 'host:slots' lines, "
                f"e.g. node1:4"
            )
        hosts.append((match.group(1), int(match.group(2))))
    if not hosts:
        raise UsageError(
            f"host discovery script {script} printed no hosts (expected 'host:slots' lines)"
        )
    return hosts


def rank_hosts(hosts: Hosts, np: int) -> dict[int, str]:
    """Rank -> host, by Horovod's own assignment, so names match what horovodrun started."""
    from horovod.runner.common.util.hosts import get_host_assignments, parse_hosts

    plan = get_host_assignments(parse_hosts(",".join(f"{h}:{s}" for h, s in hosts)), np)
    return {slot.rank: slot.hostname for slot in plan}


def check_reachable(host: str, port: int) -> None:
    """``UsageError`` unless ``host`` accepts a TCP connection on its SSH ``port`` within 3 s."""
    try:
        with socket.create_connection((host, port), timeout=3):
            pass
    except OSError as err:
        raise UsageError(
            f"host {host} is unreachable on SSH port {port} ({err.strerror or err})"
        ) from None
