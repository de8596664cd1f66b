"""``hvdtrain run``: launch a training script on N workers through horovodrun.

What it adds to plain horovodrun: user errors caught before any worker starts (one line each),
MLflow prepared once and passed to every worker, Gloo by default, and the job's exit status.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

from .errors import CliError

FRAMEWORKS = ("auto", "torch", "keras")
_LOCAL_NAMES = {"localhost", "127.0.0.1", "::1"}


def register(subparsers) -> None:
    parser = subparsers.add_parser("run", help="launch SCRIPT on N workers (horovodrun, Gloo by default)")
    parser.add_argument("-np", "--num-proc", dest="np", type=int, required=True, help="number of workers")
    hosts = parser.add_mutually_exclusive_group()
    hosts.add_argument("-H", "--hosts", help="host:slots,... (default localhost:NP)")
    hosts.add_argument("--hostfile", help="file of 'host slots=N' lines")
    parser.add_argument("--mpi", action="store_true", help="use MPI instead of Gloo (Horovod built with MPI)")
    parser.add_argument("--framework", default="auto", help=f"one of {', '.join(FRAMEWORKS)}: checked before launch")
    parser.add_argument("--ssh-port", type=int, default=22, help="SSH port of remote hosts")
    parser.add_argument("script", help="the training script (python file)")
    parser.add_argument("args", nargs="...", help="arguments passed to the script")
    parser.set_defaults(func=main)


def main(args) -> int:
    command = build_command(args)
    env = worker_env(multi_host=any(not _is_local(h) for h, _ in _hosts(args)))
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, bufsize=1)
    failure = _relay_launcher_stderr(proc.stderr)
    returncode = proc.wait()
    if returncode == 0:
        return 0
    if failure is None:
        return returncode
    rank, status = failure
    print(f"hvdtrain: worker {rank} exited with status {status}; the job was stopped", file=sys.stderr)
    return status if 0 < status < 256 else 1


def _relay_launcher_stderr(stream) -> tuple[int, int] | None:
    """Forward horovodrun's own stderr, minus the Python traceback it prints when a worker fails.

    Workers' output reaches horovodrun's stdout (rank-prefixed) and passes straight through.
    Returns (rank, exit status) of the first failed worker, if horovodrun named one; any other
    traceback (a launcher error) is printed in full.
    """
    traceback: list[str] = []
    rank = status = None
    for line in stream:
        if line.startswith("Traceback (most recent call last):"):
            traceback = [line]
        elif traceback:
            traceback.append(line)
            if match := re.match(r"Process name: (\d+)", line):
                rank = int(match.group(1))
            elif match := re.match(r"Exit code: (-?\d+)", line):
                status = int(match.group(1))
        else:
            sys.stderr.write(line)
    if rank is not None and status is not None:
        return rank, status
    sys.stderr.writelines(traceback)
    return None


def build_command(args) -> list[str]:
    """Validate the request and return the horovodrun command line; ``CliError`` on bad input."""
    if args.np < 1:
        raise CliError(f"-np must be >= 1, got {args.np}")
    if args.framework not in FRAMEWORKS:
        raise CliError(f"unknown framework {args.framework!r}; allowed: {', '.join(FRAMEWORKS)}")
    script = Path(args.script)
    if not script.is_file():
        raise CliError(f"script not found: {args.script}")
    hosts = _hosts(args)
    slots = sum(slot for _, slot in hosts)
    if args.np > slots:
        raise CliError(f"-np {args.np} needs {args.np} slots but the hosts offer {slots} "
                       f"({','.join(f'{h}:{s}' for h, s in hosts)})")
    for host, _ in hosts:
        if not _is_local(host):
            _check_reachable(host, args.ssh_port)
    if args.framework != "auto":
        _check_framework(args.framework)
    horovodrun = Path(sys.executable).parent / "horovodrun"
    return [str(horovodrun), "-np", str(args.np), "-H", ",".join(f"{h}:{s}" for h, s in hosts),
            "--mpi" if args.mpi else "--gloo", "-p", str(args.ssh_port),
            sys.executable, str(script), *args.args]


def worker_env(multi_host: bool) -> dict[str, str]:
    """This environment plus the MLflow settings every worker must share."""
    from ..tracking import prepare_local_store

    env = dict(os.environ)
    if not env.get("MLFLOW_TRACKING_URI"):
        if multi_host:
            print("hvdtrain: warning: MLFLOW_TRACKING_URI is not set; on several hosts rank 0's local store "
                  "is used; set it to a shared tracking server", file=sys.stderr)
        env["MLFLOW_TRACKING_URI"] = prepare_local_store()
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _hosts(args) -> list[tuple[str, int]]:
    from horovod.runner.common.util.hosts import parse_host_files

    if args.hostfile:
        if not Path(args.hostfile).is_file():
            raise CliError(f"hostfile not found: {args.hostfile}")
        spec = parse_host_files(args.hostfile)
        if not spec:
            raise CliError(f"hostfile {args.hostfile} lists no hosts ('host slots=N' lines)")
    else:
        spec = args.hosts or f"localhost:{max(args.np, 1)}"
    hosts = []
    for item in spec.split(","):
        match = re.fullmatch(r"\s*([^:\s]+)(?::(\d+))?\s*", item)
        if not match:
            raise CliError(f"bad host {item!r}: use host:slots, e.g. node1:4")
        hosts.append((match.group(1), int(match.group(2) or 1)))
    return hosts


def _is_local(host: str) -> bool:
    return host in _LOCAL_NAMES or host in (socket.gethostname(), socket.getfqdn())


def _check_reachable(host: str, port: int) -> None:
    try:
        with socket.create_connection((host, port), timeout=3):
            pass
    except OSError as err:
        raise CliError(f"host {host} is unreachable on SSH port {port} ({err.strerror or err})") from None


def _check_framework(framework: str) -> None:
    from horovod.common.util import extension_available

    extension = {"torch": "torch", "keras": "tensorflow"}[framework]
    if not extension_available(extension):
        raise CliError(f"Horovod was built without {extension}: run `make install`")
