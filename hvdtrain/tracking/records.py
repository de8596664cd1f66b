"""Tracking records and how each one is sent to MLflow.

A record is a small JSON-able dict, so the same record can be sent now, buffered while the server
is down, or written to a spill file and sent by ``hvdtrain mlflow-sync`` later: one code path.
"""
from __future__ import annotations

import time
from pathlib import Path
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH


@dataclass
class RunSpec:
    """The run records belong to; ``run_id`` stays None until the run exists on the server."""

    experiment: str | None = None
    experiment_id: str | None = None
    run_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    parent_run_id: str | None = None
    run_id: str | None = None

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


def artifact_record(path: str, artifact_path: str | None) -> dict[str, Any]:
    return {"kind": "artifact", "path": path, "artifact_path": artifact_path}


def end_record(status: str) -> dict[str, Any]:
    return {"kind": "end", "status": status, "end_time": now_ms()}


def is_retryable(err: Exception) -> bool:
    """Server or network trouble is retried; a request the server rejects (4xx) never succeeds."""
    if isinstance(err, MlflowException):
        status = err.get_http_status_code()
        return not (400 <= status < 500) or status == 429
    return True


def open_run(client: MlflowClient, spec: RunSpec) -> str:
    """Create the run ``spec`` describes, or reopen it when it has an id; returns the id."""
    if spec.run_id:
        client.update_run(spec.run_id, status="RUNNING")
        return spec.run_id
    experiment_id = spec.experiment_id or "0"
    if spec.experiment:
        found = client.get_experiment_by_name(spec.experiment)
        if found is None:
            try:
                experiment_id = client.create_experiment(spec.experiment)
            except MlflowException:  # another job created it meanwhile
                experiment_id = client.get_experiment_by_name(spec.experiment).experiment_id
        else:
            experiment_id = found.experiment_id
    tags = dict(spec.tags)
    if spec.parent_run_id:
        tags[MLFLOW_PARENT_RUN_ID] = spec.parent_run_id
    spec.run_id = client.create_run(experiment_id, run_name=spec.run_name, tags=tags).info.run_id
    return spec.run_id


def merge_metrics(records: Iterable[dict[str, Any]]) -> list[list]:
    return [m for record in records for m in record["metrics"]]


def send(client: MlflowClient, run_id: str, record: dict[str, Any]) -> None:
    kind = record["kind"]
    if kind == "metrics":
        metrics = [Metric(k, v, ts, step) for k, v, ts, step in record["metrics"]]
        for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=metrics[i:i + MAX_METRICS_PER_BATCH], synchronous=True)
    elif kind in ("params", "tags"):
        entity = Param if kind == "params" else RunTag
        items = [entity(k, v) for k, v in record[kind].items()]
        for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            client.log_batch(run_id, **{kind: items[i:i + MAX_PARAMS_TAGS_PER_BATCH]}, synchronous=True)
    elif kind == "artifact":
        if Path(record["path"]).is_dir():
            client.log_artifacts(run_id, record["path"], record["artifact_path"])
        else:
            client.log_artifact(run_id, record["path"], record["artifact_path"])
    elif kind == "end":
        client.set_terminated(run_id, record["status"], record["end_time"])
    else:
        raise ValueError(f"unknown tracking record kind {kind!r}; allowed: metrics, params, tags, artifact, end")
