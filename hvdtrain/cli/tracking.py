"""``hvdtrain mlflow-sync JOURNAL`` and ``hvdtrain ui``: the tracking subcommands of the CLI (MLflow
is imported when one of them runs, not when the CLI starts); the work is ``hvdtrain.tracking``'s."""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
from pathlib import Path

from ..core.errors import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the tracking subcommands; each sets ``func(args) -> exit code``."""
    sync = subparsers.add_parser(
        "mlflow-sync",
        help="upload what a job's tracking journal holds and the MLflow "
        "server never received (server down, job killed)",
    )
    sync.add_argument("file", type=Path, help="the journal (.jsonl) named in the job's warning")
    sync.add_argument(
        "--tracking-uri",
        help="default: the store the job tracked to, recorded in the journal (never the shell's "
        "MLFLOW_TRACKING_URI)",
    )
    sync.set_defaults(func=_sync)

    ui = subparsers.add_parser(
        "ui", help="serve the MLflow UI on the local store (or MLFLOW_TRACKING_URI)"
    )
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(func=_ui)


def _sync(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from ..tracking.journal import JournalInUse, NotAJournal
    from ..tracking.sync import NothingToSync, UnknownStore, sync

    try:
        run_id, sent, uri = sync(args.file, args.tracking_uri)
    except NothingToSync as err:
        print(f"hvdtrain: mlflow-sync {args.file}: {err}", file=sys.stderr)
        return 0
    except (JournalInUse, UnknownStore, NotAJournal, UsageError) as err:
        raise UsageError(f"mlflow-sync {args.file}: {err}") from None
    except (OSError, ValueError, MlflowException) as err:
        raise UsageError(
            f"mlflow-sync {args.file}: {str(err)[:300]} (unsent records are kept in the file; "
            "run the command again)"
        ) from None
    print(f"uploaded {sent} records from {args.file} to run {run_id} at {uri}")
    return 0


def _ui(args: argparse.Namespace) -> int:
    from ..tracking import store

    _check_can_listen(args.host, args.port)
    try:
        uri = store.prepare_local_store()
    except store.StoreNotWritable as err:
        raise UsageError(f"ui: {err}") from None
    print(
        f"MLflow UI on http://{args.host}:{args.port} (store: {uri}); Ctrl-C stops it", flush=True
    )
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--workers",
        "1",
    ]
    # Replaced by mlflow ui, not its parent: a SIGTERM (a service manager, `kill`, a test) then
    # reaches mlflow ui, which stops its web server and job workers. A parent killed by it left
    # them running, holding the port and ~2 GB of memory.
    # MLflow's GenAI job runners (seven more processes, ~250 MB and seconds of start-up each) serve
    # no training run; a user who wants them sets the variable.
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    sys.stdout.flush()
    os.execv(sys.executable, command)


def _check_can_listen(host: str, port: int) -> None:
    """Refuse a port the web server could not listen on, before printing its URL: the server would
    fail after the line and the advertised page would be whatever already holds the port (another
    MLflow server's store). Bound the way uvicorn binds (``SO_REUSEADDR``: a port left in
    TIME_WAIT is free), then released for ``mlflow ui``."""
    if not 0 < port < 65536:  # name resolution would take it modulo 65536 and bind another port
        raise UsageError(f"ui: --port must be between 1 and 65535, got {port}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, OverflowError) as err:
        raise UsageError(
            f"ui: cannot listen on {host}:{port} ({err}): check --host and --port"
        ) from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as err:
            remedy = (
                "another server holds it; pass another --port"
                if err.errno == errno.EADDRINUSE
                else "check --host and --port"
            )
            raise UsageError(
                f"ui: cannot listen on {host}:{port} ({err.strerror}): {remedy}"
            ) from None
