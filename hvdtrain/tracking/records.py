"""Tracking records and how each one is sent to MLflow.

A record is a small JSON-able dict, so the same record can be sent now, buffered while the server
is down, or written to a spill file and sent by ``hvdtrain mlflow-sync`` later: one code path.
"""
from __future__ import annotations

import time
from pathlib import Path
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping

from mlflow.entities import LifecycleStage, Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH

from . import legs
from .legs import log


@dataclass
class RunSpec:
    """The run records belong to; ``run_id`` stays None until the run exists on the server."""

    experiment: str | None = None
    experiment_id: str | None = None
    run_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    parent_run_id: str | None = None
    run_id: str | None = None
    leg: int | None = None  # 1 for a new run, +1 each time a resumed job reopens it
    run_files: list[str] = field(default_factory=list)  # where to record the run's id once it exists

    def as_record(self) -> dict[str, Any]:
        return {"kind": "run", **asdict(self)}


def now_ms() -> int:
    return int(time.time() * 1000)


def metrics_record(metrics: Mapping[str, float], step: int) -> dict[str, Any]:
    timestamp = now_ms()
    return {"kind": "metrics", "metrics": [[k, float(v), timestamp, int(step)] for k, v in metrics.items()]}


def params_record(params: Mapping[str, Any]) -> dict[str, Any]:
    return {"kind": "params", "params": {k: str(v) for k, v in params.items()}}


def tags_record(tags: Mapping[str, Any]) -> dict[str, Any]:
    return {"kind": "tags", "tags": {k: str(v) for k, v in tags.items()}}


def artifact_record(path: str, artifact_path: str | None, per_leg: bool = False) -> dict[str, Any]:
    """``per_leg``: a later leg of a resumed job logs it under ``leg<N>/`` instead of replacing it."""
    return {"kind": "artifact", "path": path, "artifact_path": artifact_path, "per_leg": per_leg}


def end_record(status: str) -> dict[str, Any]:
    return {"kind": "end", "status": status, "end_time": now_ms()}


def is_retryable(err: Exception) -> bool:
    """Server or network trouble is retried; a request the server rejects (4xx) never succeeds."""
    if isinstance(err, MlflowException):
        status = err.get_http_status_code()
        return not (400 <= status < 500) or status == 429
    return True


def open_run(client: MlflowClient, spec: RunSpec) -> dict[str, str]:
    """Create the run ``spec`` describes, or reopen it (RUNNING again) when it has an id: the next
    leg of a resumed job. Records the run's id in ``spec.run_files`` and ``$HVDTRAIN_RUN_FILE``.
    Returns the params the run already had (none for a new run), for ``send``."""
    run = _run_to_continue(client, spec)
    if run is not None:
        spec.experiment_id = run.info.experiment_id
        if spec.leg is None:  # already set when syncing the spill file of a leg opened before
            spec.leg = int(run.data.tags.get(legs.LEG_TAG, "1")) + 1
        client.update_run(spec.run_id, status="RUNNING")
        client.set_tag(spec.run_id, legs.LEG_TAG, str(spec.leg))
        previous = dict(run.data.params)
    else:
        spec.experiment_id = _experiment_id(client, spec)
        tags = {**spec.tags, legs.LEG_TAG: "1"}
        if spec.parent_run_id:
            tags[MLFLOW_PARENT_RUN_ID] = spec.parent_run_id
        spec.run_id = client.create_run(spec.experiment_id, run_name=spec.run_name, tags=tags).info.run_id
        spec.leg, previous = 1, {}
    legs.write_run_files(spec.run_files, spec.run_id, client.tracking_uri, spec.experiment_id)
    return previous


def _run_to_continue(client: MlflowClient, spec: RunSpec) -> Run | None:
    """The run ``spec`` names, if any. One the store does not have (deleted, or recorded by
    another store at the same relative URI) gives way to a new run with a warning, rather than
    failing every retry until the job ends."""
    if not spec.run_id:
        return None
    try:
        run = client.get_run(spec.run_id)
        if run.info.lifecycle_stage == LifecycleStage.ACTIVE:
            return run
    except MlflowException as err:
        if err.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
    log.warning("hvdtrain: MLflow run %s to continue is not in %s (or deleted); this job logs to a new run",
                spec.run_id, client.tracking_uri)
    spec.run_id, spec.leg = None, None
    return None


def _experiment_id(client: MlflowClient, spec: RunSpec) -> str:
    """The experiment named in ``spec`` (created if missing), else its id, else MLflow's default."""
    if not spec.experiment:
        return spec.experiment_id or "0"
    found = client.get_experiment_by_name(spec.experiment)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(spec.experiment)
    except MlflowException:  # another job created it meanwhile
        return client.get_experiment_by_name(spec.experiment).experiment_id


def merge_metrics(records: Iterable[dict[str, Any]]) -> list[list]:
    return [m for record in records for m in record["metrics"]]


def send(client: MlflowClient, spec: RunSpec, record: dict[str, Any], previous_params: Mapping[str, str]) -> None:
    """Send ``record`` to the opened run; ``previous_params``: what ``open_run`` returned."""
    kind, run_id = record["kind"], spec.run_id
    if kind == "metrics":
        metrics = [Metric(k, v, ts, step) for k, v, ts, step in record["metrics"]]
        for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=metrics[i:i + MAX_METRICS_PER_BATCH], synchronous=True)
    elif kind in ("params", "tags"):
        values = record[kind]
        if kind == "params":
            values = legs.leg_params(values, previous_params, spec.leg or 1)
        entity = Param if kind == "params" else RunTag
        items = [entity(k, v) for k, v in values.items()]
        for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            client.log_batch(run_id, **{kind: items[i:i + MAX_PARAMS_TAGS_PER_BATCH]}, synchronous=True)
    elif kind == "artifact":
        artifact_path = record["artifact_path"]
        if record.get("per_leg"):
            artifact_path = legs.leg_artifact_path(artifact_path, spec.leg or 1)
        if Path(record["path"]).is_dir():
            client.log_artifacts(run_id, record["path"], artifact_path)
        else:
            client.log_artifact(run_id, record["path"], artifact_path)
    elif kind == "end":
        client.set_terminated(run_id, record["status"], record["end_time"])
    else:
        raise ValueError(f"unknown tracking record kind {kind!r}; allowed: metrics, params, tags, artifact, end")
