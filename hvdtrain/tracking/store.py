"""Where tracking data goes, and how long a call to it may block.

MLflow's HTTP client retries a dead server for about four minutes by default (7 retries with
exponential backoff, 120 s timeout). Tracking must never hold training that long, so unless the
user set them, the retry settings below are shortened for this process; the tracker's own
background thread keeps retrying for as long as the job runs.
"""

from __future__ import annotations

import logging
import os
import tempfile
import urllib.parse
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


def bound_http_calls() -> None:
    """Short MLflow HTTP retries/timeouts, unless the user chose their own."""
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


def tracking_uri() -> str:
    """MLflow's own resolution: ``MLFLOW_TRACKING_URI``, else its default local sqlite store."""
    return mlflow.get_tracking_uri()


def absolute(uri: str) -> str:
    """``uri`` with a relative local path made absolute: the same store from any directory (a
    journal synced from elsewhere, a worker started in another directory)."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = _local_path(uri)
        return f"sqlite:///{path.absolute()}" if path is not None else uri
    if "://" not in uri and not uri.startswith(("sqlite:", "file:")):
        return str(Path(uri).absolute())
    return uri


def is_local(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


class StoreNotWritable(Exception):
    """A local store this process cannot write. Found before MLflow opens it: MLflow's database
    engine retries an unwritable sqlite file for about 100 s before failing with a line that does
    not say why."""


def check_writable(uri: str) -> None:
    """Raise ``StoreNotWritable`` when ``uri`` is a local store (a sqlite file, a file store) that
    cannot be written here: its directory (or the nearest one that exists, where it would be
    made) takes no new file, or its database file exists read-only. Tried by writing, not by
    permission bits, which a read-only mount or root's rights make lie."""
    path = _local_path(uri)
    if path is None:
        return
    sqlite = uri.startswith("sqlite:")
    directory = path.parent if sqlite else path
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    try:
        if not directory.is_dir():
            raise NotADirectoryError(f"{directory} is a file, not a directory")
        handle, probe = tempfile.mkstemp(prefix=".hvdtrain-probe-", dir=directory)
        os.close(handle)
        os.unlink(probe)
        if sqlite and path.exists():
            with open(path, "r+b"):
                pass
    except OSError as err:
        reason = f"{err.strerror}: {err.filename}" if err.strerror else str(err)
        raise StoreNotWritable(
            f"the MLflow store {uri} cannot be written ({reason}); run from a writable directory "
            "or set MLFLOW_TRACKING_URI to a store you can write"
        ) from None


def _local_path(uri: str) -> Path | None:
    """The file (sqlite) or directory (file store) of a local ``uri``; None for anything else,
    an in-memory database included."""
    if uri.startswith("sqlite:"):
        database = uri.split(":", 1)[1].removeprefix("//")
        database = database[1:] if database.startswith("/") else database
        database = database.split("?", 1)[0]
        return Path(database) if database and database != ":memory:" else None
    if uri.startswith("file:"):
        return Path(urllib.parse.unquote(urllib.parse.urlparse(uri).path))
    return Path(uri) if "://" not in uri else None


def prepare_local_store() -> str:
    """Create (and migrate) the local store once, before workers start; returns its URI.

    Every rank opens the store; with a fresh sqlite file concurrent opens race MLflow's schema
    migration. Called by the launcher, this creates it first and exports the absolute URI, so
    workers started in another directory still find the same store. A remote URI is left alone.
    Idempotent. ``StoreNotWritable`` at once for a local store that cannot be written.
    """
    uri = tracking_uri()
    if is_local(uri):
        check_writable(uri)
        # Creating a store is not news: MLflow's "Creating initial MLflow database tables..." stays
        # out of the job's console.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        MlflowClient(uri).search_experiments(max_results=1)
        os.environ["MLFLOW_TRACKING_URI"] = uri
    return uri


def default_spill_dir() -> Path:
    return Path(os.environ.get("HVDTRAIN_MLFLOW_SPILL_DIR", "mlflow-spill")).absolute()
