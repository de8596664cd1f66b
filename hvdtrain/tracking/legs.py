"""One MLflow run per job, even when the job is stopped and resumed: each resume is a new *leg*.

The run that wrote a checkpoint directory is recorded in ``<checkpoint dir>/mlflow-run.json``;
a job resumed from that directory's checkpoints reopens the same run instead of creating a new
one. A launcher learns the run through ``$HVDTRAIN_RUN_FILE`` (same JSON), for instance to mark
it FAILED when a worker dies.

MLflow refuses to change a logged param, and a resumed leg may differ (``world_size``,
``epochs``): the first leg's values stay under their names, a later leg's differing value is
logged as ``leg<N>.<name>``. Nothing is refused, nothing is lost.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

from ..core.checkpoint import CheckpointDir, atomic_write

log = logging.getLogger("hvdtrain.tracking")
log.setLevel(logging.WARNING)  # some imports (mlflow.pytorch's) raise the root logger to ERROR

RUN_FILE = "mlflow-run.json"
RUN_FILE_ENV = "HVDTRAIN_RUN_FILE"
LEG_TAG = "hvdtrain.leg"
FAILURE_TAG = "hvdtrain.failure"
JOB_TAG = (
    "hvdtrain.elastic_job"  # an elastic job's run, found again by the process that becomes rank 0
)
MLFLOW_BOUND_S = 20.0  # longest a launcher waits on MLflow to mark a failed run


def run_file(checkpoint_dir: str | os.PathLike) -> Path:
    return Path(checkpoint_dir) / RUN_FILE


def continued_run(checkpoint_dir: str | os.PathLike, tracking_uri: str) -> str | None:
    """The run a job resumed from ``checkpoint_dir`` continues: the run that wrote its
    checkpoints. ``None`` (a new run) when there is no checkpoint to resume from (training starts
    from scratch, and its steps would repeat the old run's) or the run is in another store."""
    if not CheckpointDir(
        checkpoint_dir, ""
    ).checkpoints():  # committed ones; loading warns about broken ones
        return None
    path = run_file(checkpoint_dir)
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
        run_id, uri = recorded["run_id"], recorded["tracking_uri"]
    except FileNotFoundError:  # checkpoints written without tracking
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("hvdtrain: %s unreadable (%s); this job logs to a new MLflow run", path, err)
        return None
    if uri != tracking_uri:
        log.warning(
            "hvdtrain: the run that wrote %s (%s) is in another tracking store (%s); this job logs "
            "to a new MLflow run in %s",
            checkpoint_dir,
            run_id,
            uri,
            tracking_uri,
        )
        return None
    return run_id


def write_run_files(
    paths: list[str], run_id: str, tracking_uri: str, experiment_id: str | None
) -> None:
    """Record the run in each of ``paths`` and in ``$HVDTRAIN_RUN_FILE``; a failure is a warning."""
    content = json.dumps(
        {"run_id": run_id, "tracking_uri": tracking_uri, "experiment_id": experiment_id}
    )
    for path in [*paths, *filter(None, [os.environ.get(RUN_FILE_ENV)])]:
        try:
            atomic_write(path, lambda tmp: Path(tmp).write_text(content, encoding="utf-8"))
        except Exception as err:  # noqa: BLE001 - best effort: never stops the run from opening
            log.warning("hvdtrain: could not record the MLflow run in %s: %s", path, err)


def record_journal(journal: Path) -> None:
    """Name the journal that kept this job's unsent tracking data in ``$HVDTRAIN_RUN_FILE``, for the
    launcher's summary; a failure is a warning."""
    path = os.environ.get(RUN_FILE_ENV)
    if not path:
        return
    try:
        recorded = json.loads(Path(path).read_text(encoding="utf-8") or "{}")
        content = json.dumps({**recorded, "journal": str(journal)})
        atomic_write(path, lambda tmp: Path(tmp).write_text(content, encoding="utf-8"))
    # best effort: the job's own warning names the journal too
    except Exception as err:  # noqa: BLE001
        log.warning("hvdtrain: could not record the tracking journal in %s: %s", path, err)


def leg_params(params: Mapping[str, str], previous: Mapping[str, str], leg: int) -> dict[str, str]:
    """``params`` as leg ``leg`` logs them, given the params the run had when the leg started."""
    return {
        (f"leg{leg}.{key}" if key in previous and previous[key] != value else key): value
        for key, value in params.items()
    }


def leg_artifact_path(artifact_path: str | None, leg: int) -> str | None:
    """Where a per-leg artifact (``config.json``) goes: the run's root for the first leg."""
    if leg <= 1:
        return artifact_path
    return f"leg{leg}" if artifact_path is None else f"leg{leg}/{artifact_path}"


def mark_failed(run_file: Path, reason: str) -> None:
    """Mark the job's MLflow run FAILED with ``reason`` (tag hvdtrain.failure), its metrics kept:
    what a launcher (``hvdtrain run``, ``hvdtrain.spark.run``) does when the job failed. Rank 0's
    tracker wrote the run's id to ``run_file``; bounded, so a dead server cannot
    hold the launcher."""
    try:
        run = json.loads(run_file.read_text())
        run_id, uri = run["run_id"], run["tracking_uri"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # tracking was off, or the run was never created
    errors: list[str] = []

    def mark():
        from mlflow.tracking import MlflowClient

        from ..core.checkpoint import first_line
        from . import store

        store.bound_http_calls()
        try:
            client = MlflowClient(uri)
            client.set_tag(run_id, FAILURE_TAG, reason)
            if client.get_run(run_id).info.status != "FAILED":
                client.set_terminated(run_id, "FAILED")
        except Exception as err:  # a tracking problem must not hide the job's own failure
            errors.append(f"{type(err).__name__}: {first_line(err)}")

    worker = threading.Thread(target=mark, daemon=True)
    worker.start()
    worker.join(MLFLOW_BOUND_S)
    if worker.is_alive() or errors:
        detail = errors[0] if errors else f"no answer within {MLFLOW_BOUND_S:.0f} s"
        print(
            f"hvdtrain: warning: MLflow run {run_id} not marked FAILED ({detail})", file=sys.stderr
        )
