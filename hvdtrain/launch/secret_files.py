"""The job's secrets for its workers on other hosts, without a command line: an owner-only file.

Horovod starts a remote worker as ``ssh host 'cd DIR; env K=V ... python ...'``, a command line
that the ssh client here and the shells there show to every user of both hosts. Secrets
(``core.secrets``) are kept off it (``scripts/patch_horovod.py``); instead, before launch, the
launcher sends them to each remote host on ssh's standard input, where they are written to
``/tmp/hvdtrain-<uid>/<job>.json``: a directory only the user can enter (refused if another user
owns it or it is a link), a file only the user can read, renamed into place whole. Each remote
worker's ``worker_guard`` reads it into its environment before it starts the worker (the path,
``worker_guard.SECRETS_FILE_ENV``, is no secret), and the launcher removes it on every host when
the job ends.

Workers on the launcher's own host inherit the secrets from horovodrun's environment, and MPI
sends them (``mpirun -x NAME``: names only) over its own connections: neither needs the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from ..core.errors import UsageError
from . import hostkeys

TIMEOUT_S = 15  # writing: before launch, the hosts were just reached
REMOVE_TIMEOUT_S = 5  # removing: a host lost with the job must not hold the launcher's exit


@contextlib.contextmanager
def sent(hosts: list[str], port: int, values: dict[str, str]) -> Iterator[str | None]:
    """``values`` in a new file on every one of ``hosts`` for the ``with`` block, removed after it
    however it ends: its path, or None when there is nothing to send or nowhere to."""
    if not hosts or not values:
        yield None
        return
    path = path_for_job()
    distribute(hosts, port, path, values)
    try:
        yield path
    finally:
        remove(hosts, port, path)


def path_for_job() -> str:
    """A new file name, the same on every host."""
    return f"/tmp/hvdtrain-{os.getuid()}/{secrets.token_hex(8)}.json"


def distribute(hosts: list[str], port: int, path: str, values: dict[str, str]) -> None:
    """Write ``values`` to ``path`` on every host at once; ``UsageError`` with one line per host
    where it could not be written."""
    directory = os.path.dirname(path)
    write = (
        f'umask 077 && d={shlex.quote(directory)} && mkdir -p "$d" && [ ! -L "$d" ] && '
        f'[ -O "$d" ] && chmod 700 "$d" && cat > "$d/.$$" && '
        f'mv "$d/.$$" {shlex.quote(path)} || {{ echo "cannot write $d" >&2; exit 1; }}'
    )
    payload = json.dumps(values)
    with ThreadPoolExecutor(len(hosts) or 1) as pool:
        done = list(pool.map(lambda host: _ssh(host, port, write, payload), hosts))
    problems = [
        f"host {host}: the job's secrets could not be written to {path} there "
        f"({(err.strip().splitlines() or ['no error output'])[-1]}): the directory must be "
        "the user's own"
        for host, (code, err) in zip(hosts, done)
        if code != 0
    ]
    if problems:
        remove(hosts, port, path)
        raise UsageError("\n".join(problems))


def remove(hosts: list[str], port: int, path: str) -> None:
    """Remove ``path`` on every host (a host that cannot be reached within ``REMOVE_TIMEOUT_S``,
    its link or the host lost, keeps the owner-only file until its /tmp is cleaned)."""
    if hosts:
        command = f"rm -f {shlex.quote(path)}"
        with ThreadPoolExecutor(len(hosts)) as pool:
            list(pool.map(lambda host: _ssh(host, port, command, "", REMOVE_TIMEOUT_S), hosts))


def _ssh(
    host: str, port: int, command: str, stdin: str, timeout: float = TIMEOUT_S
) -> tuple[int, str]:
    try:
        done = subprocess.run(
            [
                "ssh",
                "-o",
                "BatchMode=yes",
                "-o",
                f"ConnectTimeout={int(timeout)}",
                *hostkeys.ssh_options(),
                "-p",
                str(port),
                host,
                command,
            ],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return 1, f"no answer within {timeout:.0f} s"
    return done.returncode, done.stderr
