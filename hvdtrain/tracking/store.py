"""Where tracking data goes, and how long a call to it may block.

MLflow's HTTP client retries a dead server for about four minutes by default (7 retries with
exponential backoff, 120 s timeout). Tracking must never hold training that long, so unless the
user set them, the retry settings below are shortened for this process; the tracker's own
background thread keeps retrying for as long as the job runs.
"""

from __future__ import annotations

import logging
import os
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


def is_local(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def prepare_local_store() -> str:
    """Create (and migrate) the local store once, before workers start; returns its URI.

    Every rank opens the store; with a fresh sqlite file concurrent opens race MLflow's schema
    migration. Called by the launcher, this creates it first and exports the absolute URI, so
    workers started in another directory still find the same store. A remote URI is left alone.
    Idempotent.
    """
    uri = tracking_uri()
    if is_local(uri):
        # Creating a store is not news: MLflow's "Creating initial MLflow database tables..." stays
        # out of the job's console.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        MlflowClient(uri).search_experiments(max_results=1)
        os.environ["MLFLOW_TRACKING_URI"] = uri
    return uri


def default_spill_dir() -> Path:
    return Path(os.environ.get("HVDTRAIN_MLFLOW_SPILL_DIR", "mlflow-spill")).absolute()
